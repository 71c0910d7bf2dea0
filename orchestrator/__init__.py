"""shardctl: declarative large-model training jobs with automatic OOM fallback."""

__version__ = "0.1.0"
