"""The Celery and kombu fixes (backends/celery/fixes.py) that are not about poison messages
(tests/poison) or a broker restart (tests/celery/test_durability.py), at kombu level.

Each runs on kombu's own transport too (`stock`), where it shows the upstream behaviour the fix
works around: if kombu ever fixes it, the `stock` case fails and says the fix may go.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from kombu.common import ignore_errors

from jobs_core import JobRegistry
from jobs_core.backends.celery import create_celery_app
from jobs_core.backends.celery.fixes import CONSUMER
from jobs_core.backends.celery.fixes import REDIS_TRANSPORT as FIXED_TRANSPORT
from jobs_core.backends.celery.reliable_redis import REDIS_TRANSPORT as RELIABLE_TRANSPORT
from tests.celery.test_reliable_redis import connection, consume, drain, publish

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = {"stock": None, "fixed": FIXED_TRANSPORT, "reliable": RELIABLE_TRANSPORT}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_closing_a_collected_connection_with_redis_gone_is_a_connection_error(
    transport: str, redis_server: Any
) -> None:
    """Fix 4: Celery's reconnect (`collect()`, then `close()`) with Redis gone.

    Both channels have a request in flight when Redis dies, as a worker's task and event
    channels do; the default channel also holds an unacked message. The first close of each
    channel is cut short by the dead socket, `collect()` clears the transport's client, and the
    second close restores the unacked message through `_connparams()`.
    """
    url, client = redis_server.url, redis_server.client()
    publish(url, "in-flight")
    conn = connection(url, TRANSPORTS[transport])
    _, received = consume(conn, channel=conn.default_channel)
    while not received:
        drain(conn, 0.2)
    consume(conn, queue="other")  # a second consuming channel, opened after the default one
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        for channel in conn.transport.channels:
            channel._next_claim_at = 0  # the reliable channels ask at once too
        conn.transport.cycle.on_poll_start()  # both channels send their request
    finally:
        redis_server.kill()  # SIGKILL: the sockets are closed, the requests never answered

    conn.collect(socket_timeout=1)  # what Celery's on_connection_error_after_connected does
    if transport == "stock":
        with pytest.raises(AttributeError, match="hostname"):
            ignore_errors(conn, conn.close)
        return
    ignore_errors(conn, conn.close)  # a connection error at most, which Celery ignores here
    del client


def test_a_worker_on_redis_runs_kombus_transport_with_the_fixes() -> None:
    """A worker app on Redis keeps kombu's own transport (the fixed subclass of it) and
    Celery's consumer with fix 1, whatever kombu it runs on."""
    app = create_celery_app(JobRegistry(), broker_url="redis://127.0.0.1:1/0")
    assert app.conf.broker_transport == FIXED_TRANSPORT
    assert app.conf.worker_consumer == CONSUMER
    amqp = create_celery_app(JobRegistry(), broker_url="amqp://127.0.0.1:1//")
    assert not amqp.conf.broker_transport
    assert amqp.conf.worker_consumer == CONSUMER
