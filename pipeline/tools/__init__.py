"""What users run beside the stages: `compare` (leaderboards and summaries), `runs` (runs left
RUNNING), `predict` (classify image files) and `reproduce` (re-run a logged run).

Imports `core`, `tracking` and `sweeps.summary`/`sweeps.stats`, never the stages or the app.
"""
