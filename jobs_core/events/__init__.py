"""Typed events and fan-out (C40–C44): `Event`, `EventReceipt`, and `JOB_FAILED`."""

from .event import JOB_FAILED, Event, EventReceipt, JobFailed

__all__ = ["JOB_FAILED", "Event", "EventReceipt", "JobFailed"]
