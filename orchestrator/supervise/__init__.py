"""The executor of store-backed jobs (local and Slurm): the supervisor loop, its daemon and the judge step."""
