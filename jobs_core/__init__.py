"""jobs_core: define background jobs once, run them on Inngest, Celery, Dramatiq or inline."""

from .config import JobsSettings, create_dispatcher
from .errors import (
    DispatchArgumentError,
    DispatchError,
    JobConfigError,
    JobFailedError,
    JobPayloadError,
    JobsError,
    PermanentError,
    RetryLater,
)
from .execution import JobOutcome, run_job, run_job_sync
from .flow import Concurrency, Throttle
from .instrumentation import (
    Instrumentation,
    JobEvent,
    LoggingInstrumentation,
    MultiInstrumentation,
)
from .job import Job, JobOptions, JobRequest
from .port import BatchOptions, DispatchOptions, DispatchReceipt, JobDispatcherPort
from .registry import JobRegistry
from .retry import Retry
from .schedule import Schedule
from .scheduler import Scheduler

__all__ = [
    "BatchOptions",
    "Concurrency",
    "DispatchArgumentError",
    "DispatchError",
    "DispatchOptions",
    "DispatchReceipt",
    "Instrumentation",
    "Job",
    "JobConfigError",
    "JobDispatcherPort",
    "JobEvent",
    "JobFailedError",
    "JobOptions",
    "JobOutcome",
    "JobPayloadError",
    "JobRegistry",
    "JobRequest",
    "JobsError",
    "JobsSettings",
    "LoggingInstrumentation",
    "MultiInstrumentation",
    "PermanentError",
    "Retry",
    "RetryLater",
    "Schedule",
    "Scheduler",
    "Throttle",
    "create_dispatcher",
    "run_job",
    "run_job_sync",
]
__version__ = "0.1.0"
