"""An app with schedules, imported by the scheduler processes the tests start (and by the
tests' own workers): one job, a schedule every minute in UTC and one at 09:00 in Paris."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jobs_core import JobRegistry, Retry

jobs = JobRegistry[Any]()


class Beat(BaseModel):
    source: str


@jobs.job("sched.beat", retry=Retry(attempts=0))
def beat(payload: Beat, ctx: Any) -> None:
    print(f"beat ran: {payload.source}", flush=True)


every_minute = jobs.schedule(
    "sched.every-minute", cron="* * * * *", job=beat, payload={"source": "every-minute"}
)
paris_morning = jobs.schedule(
    "sched.paris-morning",
    cron="0 9 * * *",
    job=beat,
    payload=Beat(source="paris"),
    timezone="Europe/Paris",
)
