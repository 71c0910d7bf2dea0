"""The local target: the target (target), the wrapper that runs an attempt and leaves its exit status on disk
(wrapper), and the memory limit (memlimit).
"""
