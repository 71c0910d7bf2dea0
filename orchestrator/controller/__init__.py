"""The Kubernetes controller: reconciles TrainingJobs into one Indexed Job per attempt, with OOM fallback."""
