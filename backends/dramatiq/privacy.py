"""What Dramatiq's log lines show of a job's payload: nothing (C23).

Upstream logs a message's arguments in full ("Failed to process message %s ..."), and payloads
may hold personal data or secrets. `HidePayloads` shows a message in those lines as
`actor(<payload>) [message id]`. Test: tests/test_secrets.py.
"""

from __future__ import annotations

import logging

import dramatiq

from jobs_core.jobs.payload import PAYLOAD_MASK


class HidePayloads(logging.Filter):
    """Shows a message in Dramatiq's log lines as `actor(<payload>) [message id]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{a.actor_name}({PAYLOAD_MASK}) [{a.message_id}]"
                if isinstance(a, (dramatiq.Message, dramatiq.broker.MessageProxy))
                else a
                for a in record.args
            )
        return True


_HIDE_PAYLOADS = HidePayloads()


def hide_payloads(log: logging.Logger) -> None:
    """Install `HidePayloads` on `log` (once)."""
    if _HIDE_PAYLOADS not in log.filters:
        log.addFilter(_HIDE_PAYLOADS)
