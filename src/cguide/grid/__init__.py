"""The guidance grid behind ``cguide.sweep``: its points (points.py), the resumable runner
(runner.py), the results folder (results.py), plots (plots.py) and W&B logging (wandb_log.py)."""
