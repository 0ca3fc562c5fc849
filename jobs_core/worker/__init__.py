"""The one worker path: delivery -> decision -> settlement (`jobs_core.worker.worker`)."""

from .worker import (
    BROKER_AWAY_SECONDS,
    ContextSource,
    Deferral,
    Delivery,
    JobWorker,
    Outcome,
    Settlement,
    StepsSetup,
    delivery_from_call,
)

__all__ = [
    "BROKER_AWAY_SECONDS",
    "ContextSource",
    "Deferral",
    "Delivery",
    "JobWorker",
    "Outcome",
    "Settlement",
    "StepsSetup",
    "delivery_from_call",
]
