"""The Slurm target: the target (target), its dry run (render), what Slurm says of jobs (accounting), the clean
Slurm environment every command runs in (env), and refusals named by spec field (refusals).
"""
