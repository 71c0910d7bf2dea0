"""What people and programs see of a job: the one view of a job and its attempts (report, and its JSON Schema),
following a run live (follow), progress read from its log (progress), and job text made safe for a terminal
(textsafe).
"""
