"""Batch-size scaling tuner: one Optuna study per batch size, objective = steps-to-target."""
