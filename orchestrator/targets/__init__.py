"""Targets (local, slurm, kubernetes) behind one small interface: render / submit / describe / logs / cancel."""
