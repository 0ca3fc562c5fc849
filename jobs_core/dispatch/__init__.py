"""Dispatching: `JobDispatcherPort`, `DispatchReceipt`, the base dispatcher, idempotency."""
