"""The bridge to the `dramatiq` command: `python -m jobs_core worker` (JOBS_BACKEND=dramatiq)
runs `dramatiq jobs_core.backends._dramatiq_bootstrap:broker`, and `broker()` builds the worker
broker there, with one actor per job of the registry named in `JOBS_DRAMATIQ_REGISTRY`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from jobs_core.__main__ import load_context, load_registry
from jobs_core.config import JobsSettings, load_settings
from jobs_core.errors import JobConfigError
from jobs_core.jobs.registry import JobRegistry
from jobs_core.worker import ContextSource

from .dramatiq import (
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_MAINTENANCE_CHANCE,
    Broker,
    logger,
    register_actors,
)

COMMAND_BROKER = f"{__name__}:broker"


def broker() -> Broker:
    """Set up the worker broker for the `dramatiq` command (it calls this in each process)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):  # a Django project's jobs may use its models
        import django

        django.setup()
    registry = load_registry(os.environ["JOBS_DRAMATIQ_REGISTRY"])
    settings = load_settings()
    made = register_actors(
        registry,
        context=load_context(os.environ.get("JOBS_DRAMATIQ_CONTEXT") or None),
        heartbeat_timeout=int(os.environ["JOBS_DRAMATIQ_HEARTBEAT_TIMEOUT"]),
        maintenance_chance=int(os.environ["JOBS_DRAMATIQ_MAINTENANCE_CHANCE"]),
    )
    logger.info(
        "jobs_core: %d job(s) on queue %r at %s",
        len(registry),
        settings.queue,
        settings.redacted_broker_url,
    )
    return made


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
    registry_path: str | None = None,
    context_path: str | None = None,
) -> int:
    """Run the `dramatiq` command for `registry` (`python -m jobs_core worker`); never returns.

    jobs_core's own options: `--queue`, `--heartbeat-timeout MS`, `--maintenance-chance N`
    (per million), `--worker-timeout MS` (idle poll interval: delayed jobs and retries may
    start up to this much late). Everything else goes to `dramatiq` (`--processes`, default 1
    here; `--threads`, default 8; `--worker-shutdown-timeout` ...).
    """
    if registry_path is None:
        raise JobConfigError("the dramatiq worker needs the registry as 'module:attribute'")
    parser = argparse.ArgumentParser(prog="python -m jobs_core worker (dramatiq)", add_help=False)
    parser.add_argument("--queue")
    parser.add_argument("--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_MS)
    parser.add_argument("--maintenance-chance", type=int, default=DEFAULT_MAINTENANCE_CHANCE)
    parser.add_argument("--worker-timeout", type=int)
    ours, rest = parser.parse_known_args(argv)
    env = {
        **os.environ,
        "JOBS_QUEUE": ours.queue or settings.queue,
        "JOBS_DRAMATIQ_REGISTRY": registry_path,
        "JOBS_DRAMATIQ_CONTEXT": context_path or "",
        "JOBS_DRAMATIQ_HEARTBEAT_TIMEOUT": str(ours.heartbeat_timeout),
        "JOBS_DRAMATIQ_MAINTENANCE_CHANCE": str(ours.maintenance_chance),
    }
    if ours.worker_timeout is not None:
        env["dramatiq_worker_timeout"] = str(ours.worker_timeout)
    command = [sys.executable, "-m", "dramatiq", COMMAND_BROKER, "-p", "1", "-t", "8", *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
