"""The job store: one directory per job on a filesystem several hosts may share (jobstore), the files it is made of
and their one-writer claims (files), where it lives (paths), and the move of a legacy SQLite store into it
(migrate).
"""
