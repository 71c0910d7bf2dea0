"""Notifications: webhooks told of a job's events after each state change is recorded (spec.notify)."""
