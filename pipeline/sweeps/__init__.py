"""Sweeps: Hydra's side (`main`, `callback`, `job`), the Optuna search, statistics, summaries and
the background evaluation of each model (`finishing`).

A job trains through the same core as a stage (`tracking.experiment`, `core.training`) and
hands the rest of each model's run to the background. Imports `core` and `tracking`; `stats` and
`summary` import neither MLflow nor TensorFlow (summary reads the store only inside
`leaderboard`).
"""
