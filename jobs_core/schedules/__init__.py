"""Schedules: `Schedule` (a cron expression, a job and its payload) and the `Scheduler`."""
