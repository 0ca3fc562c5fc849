"""A backend factory for the tests (`SHOP_BACKEND=shop.testing:counting_dramatiq`): the Dramatiq
dispatcher, counting each batch the backend accepted in Redis (`SHOP_STORE_URL`), and dying
(SIGKILL) right after the first one when `SHOP_DIE_AFTER_SEND=1`."""

from __future__ import annotations

import os
import signal
from typing import Any

import redis

from jobs_core.backends import dramatiq as dramatiq_backend

SENT_KEYS = "shop:sent-keys"
SENT_BY = "shop:sent-by"


class CountingDispatcher:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.store = redis.Redis.from_url(os.environ["SHOP_STORE_URL"])

    def dispatch_many_sync(self, items: Any, **options: Any) -> Any:
        items = list(items)
        receipts = self.inner.dispatch_many_sync(items, **options)
        self.store.rpush(SENT_KEYS, *[item.idempotency_key for item in items])
        self.store.hincrby(SENT_BY, str(os.getpid()), len(items))
        if os.environ.get("SHOP_DIE_AFTER_SEND") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return receipts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def counting_dramatiq(settings: Any, **options: Any) -> CountingDispatcher:
    return CountingDispatcher(dramatiq_backend.create_dispatcher(settings, **options))
