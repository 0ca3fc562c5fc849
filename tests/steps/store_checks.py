"""What every `StepStore` must do (C35), as functions of a store: tests/steps/test_stores.py
runs them on each store in the test process, and on the Django store inside a Django project."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

from jobs_core.steps.store import StepStore


def check_a_new_run_has_no_records(store: StepStore) -> None:
    assert store.load("run-new") == {}


def check_save_keeps_the_first_value_and_put_replaces(store: StepStore) -> None:
    run = f"run-{uuid.uuid4().hex}"
    assert store.save(run, "s:charge", '{"id": 1}') == '{"id": 1}'
    assert store.save(run, "s:charge", '{"id": 2}') == '{"id": 1}'  # the first writer won
    store.put(run, "a:mail", "1 RuntimeError: down")
    store.put(run, "a:mail", "2 RuntimeError: down")
    assert store.load(run) == {"s:charge": '{"id": 1}', "a:mail": "2 RuntimeError: down"}
    assert store.load("another-run") == {}


def check_two_deliveries_racing_on_one_step_both_continue_with_the_first_value(
    store: StepStore,
) -> None:
    run = f"run-{uuid.uuid4().hex}"
    go = threading.Barrier(8)
    kept: list[str] = []

    def deliver(n: int) -> None:
        go.wait()
        kept.append(store.save(run, "s:race", f'"{n}"'))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(kept)) == 1 and len(kept) == 8
    assert store.load(run) == {"s:race": kept[0]}


def check_a_finished_run_keeps_its_records_for_the_retention_only(store: StepStore) -> None:
    run, other = f"run-{uuid.uuid4().hex}", f"run-{uuid.uuid4().hex}"
    store.save(run, "s:a", "1")
    store.save(other, "s:a", "2")
    store.finish(run, timedelta(days=7))
    assert store.load(run) == {"s:a": "1"}  # kept for a late duplicate delivery
    store.finish(other, timedelta(seconds=1))
    deadline = time.monotonic() + 10
    while store.load(other) and time.monotonic() < deadline:
        time.sleep(0.2)
        _sweep(store)
    assert store.load(other) == {}
    assert store.load(run) == {"s:a": "1"}


def _sweep(store: StepStore) -> None:
    """Let a store that deletes expired records as runs end see another run end."""
    if hasattr(store, "_purged"):
        store._purged = 0.0
    store.finish(f"sweeper-{uuid.uuid4().hex}", timedelta(days=1))


CHECKS = [
    check_a_new_run_has_no_records,
    check_save_keeps_the_first_value_and_put_replaces,
    check_two_deliveries_racing_on_one_step_both_continue_with_the_first_value,
    check_a_finished_run_keeps_its_records_for_the_retention_only,
]
