"""The shop's jobs: delivering an order records a `Delivery` through the ORM."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from jobs_core import JobRegistry, Retry

jobs = JobRegistry[Any]()


class OrderPlaced(BaseModel):
    number: int


@jobs.job("shop.deliver", retry=Retry(attempts=3, min_backoff=timedelta(milliseconds=100)))
def deliver(payload: OrderPlaced, ctx: Any) -> None:
    from shop.models import Delivery

    Delivery.objects.create(number=payload.number)
