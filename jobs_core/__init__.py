"""jobs_core: define background jobs once, run them on Inngest, Celery, Dramatiq or inline."""

from . import checkout  # noqa: F401, I001  (first: where the other modules come from)

from pydantic import BaseModel as Payload

from .backend import create_dispatcher
from .config import JobsSettings
from .dispatch.port import BatchOptions, DispatchOptions, DispatchReceipt, JobDispatcherPort
from .errors import (
    DispatchArgumentError,
    DispatchError,
    JobConfigError,
    JobFailedError,
    JobPayloadError,
    JobsError,
    PermanentError,
    RetryLater,
    StepError,
    StepFailedError,
)
from .events import JOB_FAILED, Event, EventReceipt, JobFailed
from .flow.options import Concurrency, Throttle
from .instrumentation import (
    Instrumentation,
    JobEvent,
    LoggingInstrumentation,
    MultiInstrumentation,
)
from .jobs.job import Job, JobOptions, JobRequest
from .jobs.registry import JobRegistry
from .jobs.retry import Retry
from .schedules.schedule import Schedule
from .schedules.scheduler import Scheduler
from .steps import Steps, StepsSync

__all__ = [
    "JOB_FAILED",
    "BatchOptions",
    "Concurrency",
    "DispatchArgumentError",
    "DispatchError",
    "DispatchOptions",
    "DispatchReceipt",
    "Event",
    "EventReceipt",
    "Instrumentation",
    "Job",
    "JobConfigError",
    "JobDispatcherPort",
    "JobEvent",
    "JobFailed",
    "JobFailedError",
    "JobOptions",
    "JobPayloadError",
    "JobRegistry",
    "JobRequest",
    "JobsError",
    "JobsSettings",
    "LoggingInstrumentation",
    "MultiInstrumentation",
    "Payload",
    "PermanentError",
    "Retry",
    "RetryLater",
    "Schedule",
    "Scheduler",
    "StepError",
    "StepFailedError",
    "Steps",
    "StepsSync",
    "Throttle",
    "create_dispatcher",
]
__version__ = "0.1.0"
