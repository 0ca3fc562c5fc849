"""Defining jobs: `Job`, `JobRegistry`, `Retry`, and the payload (validate, JSON, its trip)."""
