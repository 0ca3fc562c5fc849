"""The Celery dispatcher's own promises: one round trip for a batch, bounded delays, timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from jobs_core import DispatchError, JobRegistry, JobsSettings
from jobs_core.backends.celery import CeleryDispatcher, create_dispatcher
from tests.support.faults import dispatch_killed_before_enqueue


class Note(BaseModel):
    text: str


jobs = JobRegistry[Any]()


@jobs.job("celery_dispatcher.note")
def note(payload: Note, ctx: Any) -> None:
    pass


@pytest.fixture
def broker(redis_server: Any) -> Iterator[tuple[str, redis.Redis]]:
    yield redis_server.url_for_db(0), redis_server.client()


def _calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_dispatch_many_is_one_pipeline(broker: tuple[str, redis.Redis]) -> None:
    url, client = broker
    dispatcher = CeleryDispatcher(url, "batch")
    try:
        dispatcher.dispatch_sync(note, {"text": "warm up"})  # connect and declare the queue
        client.config_resetstat()
        receipts = dispatcher.dispatch_many_sync([(note, {"text": str(i)}) for i in range(500)])
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        dispatcher.close()
    assert len({r.dispatch_id for r in receipts}) == 500
    assert client.llen("batch") == 501
    assert stats["cmdstat_lpush"]["calls"] == 500
    # 500 LPUSH and nothing per message besides: one pipeline (a few setup commands at most)
    others = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_lpush")
    assert others <= 5, stats


def test_message_is_a_plain_celery_task_message(broker: tuple[str, redis.Redis]) -> None:
    import json

    url, client = broker
    dispatcher = CeleryDispatcher(url, "shape")
    try:
        receipt = dispatcher.dispatch_sync(note, {"text": "secret-ish"})
    finally:
        dispatcher.close()
    message = json.loads(client.lindex("shape", 0))  # type: ignore[arg-type]
    assert message["headers"]["task"] == note.name
    assert message["headers"]["id"] == receipt.dispatch_id
    assert message["content-type"] == "application/json"
    assert "secret-ish" not in message["headers"]["argsrepr"], "payloads stay out of headers"


def test_delay_longer_than_the_visibility_timeout_is_refused(
    broker: tuple[str, redis.Redis],
) -> None:
    url, client = broker
    dispatcher = CeleryDispatcher(url, "long", visibility_timeout=100)
    try:
        with pytest.raises(DispatchError, match="visibility_timeout"):
            dispatcher.dispatch_sync(note, {"text": "x"}, delay=timedelta(seconds=95))
        dispatcher.dispatch_sync(note, {"text": "x"}, delay=timedelta(seconds=80))
    finally:
        dispatcher.close()
    assert client.llen("long") == 1


def test_idempotency_keys_are_shared_by_producers(broker: tuple[str, redis.Redis]) -> None:
    url, client = broker
    first, second = CeleryDispatcher(url, "idem"), CeleryDispatcher(url, "idem")
    try:
        a = first.dispatch_sync(note, {"text": "1"}, idempotency_key="order-1")
        b = second.dispatch_sync(note, {"text": "2"}, idempotency_key="order-1")
    finally:
        first.close()
        second.close()
    assert not a.deduplicated and b.deduplicated and b.dispatch_id == a.dispatch_id
    assert client.llen("idem") == 1
    assert 0 < client.ttl(f"jobs_core:idem:{note.name}:order-1") <= 24 * 3600


def test_create_dispatcher_reads_settings_and_hides_the_password() -> None:
    settings = JobsSettings(
        backend="celery", broker_url="redis://:hunter2@127.0.0.1:1/0", queue="q", dispatch_timeout=1
    )
    dispatcher = create_dispatcher(settings)
    try:
        assert dispatcher.queue == "q" and dispatcher.timeout == 1
        assert "hunter2" not in repr(dispatcher)
        started = time.monotonic()
        with pytest.raises(DispatchError) as caught:
            dispatcher.dispatch_sync(note, {"text": "x"})
        assert time.monotonic() - started < 3
        assert "hunter2" not in str(caught.value)
    finally:
        dispatcher.close()


def test_a_keyed_dispatch_killed_before_its_publish_leaves_no_claim(
    broker: tuple[str, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is claimed in the Redis transaction that pushes the task, so a producer that
    dies before that transaction (a relay killed mid-send, C32) leaves nothing claimed and the
    resend goes out; a repeat after it is deduplicated. Claimed in a call of its own first, the
    resend came back 'deduplicated' and the job never ran."""
    url, client = broker
    dispatcher = CeleryDispatcher(url, "killed")
    try:
        dispatch_killed_before_enqueue(monkeypatch, dispatcher, note, {"text": "1"}, "order-1")
        again = dispatcher.dispatch_sync(note, {"text": "1"}, idempotency_key="order-1")
        repeat = dispatcher.dispatch_sync(note, {"text": "1"}, idempotency_key="order-1")
        keyed = note.request({"text": "2"}, idempotency_key="m")
        many = dispatcher.dispatch_many_sync([keyed, (note, {"text": "3"}), keyed])
    finally:
        dispatcher.close()
    assert not again.deduplicated and repeat.deduplicated
    assert repeat.dispatch_id == again.dispatch_id
    assert [r.deduplicated for r in many] == [False, False, True]
    assert client.llen("killed") == 3
    assert _calls(client, "exec") == 2  # claim and push in one MULTI/EXEC; a repeat writes nothing


def test_a_keyed_task_is_pushed_as_kombu_pushes_it(broker: tuple[str, redis.Redis]) -> None:
    """The item a keyed dispatch pushes in its transaction (`redis_item`) is the item kombu's
    own publish pushes for the same task message, but for kombu's random delivery tag."""
    import json

    url, client = broker
    dispatcher = CeleryDispatcher(url, "items")
    try:
        dispatcher.dispatch_sync(note, {"text": "x"})
        dispatcher.dispatch_sync(note, {"text": "x"}, idempotency_key="k")
    finally:
        dispatcher.close()
    keyed, plain = (json.loads(item) for item in client.lrange("items", 0, -1))
    for item in (keyed, plain):
        item["properties"].pop("delivery_tag")
        for name in ("id", "root_id"):
            item["headers"].pop(name)
        item["properties"].pop("correlation_id")
    assert keyed == plain
