"""`jobs-core` (or `python -m jobs_core`): list an app's jobs, dispatch one, or start the
configured backend's worker.

    jobs-core list myapp.jobs:jobs [--json]
    jobs-core dispatch myapp.jobs:jobs mail.welcome '{"email": "a@example.com"}'
    jobs-core worker myapp.jobs:jobs --context myapp.infra:create_context [-- extra]
    jobs-core scheduler myapp.jobs:jobs
    jobs-core relay myapp.jobs:jobs --database-url postgresql+psycopg://...

The backend is `--backend NAME`, else `JOBS_BACKEND` (default `inline`); `worker` passes
unknown options to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from .backend import announce, create_dispatcher, load_backend, require_context
from .config import JobsSettings, load_context, load_registry, load_settings
from .dispatch.idempotency import describe_rule
from .errors import JobsError
from .jobs.job import Job
from .jobs.registry import JobRegistry
from .schedules.cli import describe_schedules, load_clock, print_schedules, run_scheduler


def _describe(registry: JobRegistry[Any]) -> list[dict[str, Any]]:
    schedules = describe_schedules(registry)
    return [
        {
            "name": job.name,
            "retry": {
                "attempts": job.retry.attempts,
                "min_backoff_seconds": job.retry.min_backoff.total_seconds(),
                "max_backoff_seconds": job.retry.max_backoff.total_seconds(),
                "jitter": job.retry.jitter,
            },
            "has_on_failure": job.on_failure is not None,
            "flow_control": _flow(job),
            "payload_schema": job.payload_model.model_json_schema(),
            "schedules": [s for s in schedules if s["job"] == job.name],
        }
        for job in registry
    ]


def _flow(job: Job[Any, Any]) -> dict[str, Any]:
    described = job.flow.describe() if job.flow is not None else {}
    if job.idempotency is not None:
        described["idempotency"] = describe_rule(job.idempotency)
    return described


def cmd_list(args: argparse.Namespace) -> int:
    described = _describe(load_registry(args.registry))
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for job in described:
        retry = job["retry"]
        print(
            f"{job['name']}  retry: attempts={retry['attempts']} "
            f"backoff={retry['min_backoff_seconds']:g}s..{retry['max_backoff_seconds']:g}s "
            f"jitter={retry['jitter']}"
        )
        if job["flow_control"]:
            print(f"  flow control: {describe_flow(job['flow_control'])}")
        print(f"  payload schema: {json.dumps(job['payload_schema'], sort_keys=True)}")
    print_schedules(described)
    return 0


def describe_flow(flow: dict[str, Any]) -> str:
    """`concurrency 5 per account_id; throttle 100 per 60s; idempotency digest_id`."""
    parts = []
    for name in ("concurrency", "throttle"):
        if name in flow:
            option = flow[name]
            period = f" per {option['period_seconds']:g}s" if "period_seconds" in option else ""
            key = f" per {option['key']}" if option["key"] else ""
            parts.append(f"{name} {option['limit']}{period}{key}")
    if "idempotency" in flow:
        parts.append(f"idempotency {flow['idempotency']}")
    return "; ".join(parts)


def cmd_dispatch(args: argparse.Namespace) -> int:
    registry = load_registry(args.registry)
    job = registry[args.name]
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise JobsError(f"the payload is not valid JSON: {exc}") from None
    dispatcher = create_dispatcher(load_context(args.context), settings=command_settings(args))
    try:
        receipt = dispatcher.dispatch_sync(
            job,
            payload,
            delay=timedelta(seconds=args.delay) if args.delay else None,
            idempotency_key=args.idempotency_key,
        )
    finally:
        close = getattr(dispatcher, "close", None)
        if close is not None:
            close()
    print(
        json.dumps(
            {
                "job": receipt.job_name,
                "dispatch_id": receipt.dispatch_id,
                "backend": receipt.backend,
                "deduplicated": receipt.deduplicated,
            }
        )
    )
    return 0


def command_settings(args: argparse.Namespace) -> JobsSettings:
    """The settings of a command: the environment's, with `--backend` over `JOBS_BACKEND`."""
    backend = getattr(args, "backend", None)
    return load_settings(backend=backend) if backend else load_settings()


def given_options(args: argparse.Namespace) -> dict[str, str]:
    """The settings the command line gave, by field, for the line that names the backend."""
    return {"backend": "--backend"} if getattr(args, "backend", None) else {}


def log_to_stderr() -> None:
    """INFO lines to stderr for the long-running commands (the worker, the scheduler, the
    relay), unless the app configured logging itself: the backend they run on is the first."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def cmd_worker(args: argparse.Namespace, extra: list[str]) -> int:
    settings = command_settings(args)
    if settings.backend == "inline":
        raise JobsError(
            "the backend is 'inline' (set JOBS_BACKEND or --backend): jobs run inside "
            "dispatch, there is no worker to start. Use --backend celery, dramatiq or inngest."
        )
    if ":" in settings.backend:
        raise JobsError("`worker` starts built-in backends only; start a third-party one its way")
    backend = load_backend(settings.backend)
    registry = load_registry(args.registry)
    context = load_context(args.context)
    require_context(registry, context, "--context MODULE:FACTORY")
    settings = settings.model_copy(update={"registry": args.registry, "context": args.context})
    log_to_stderr()
    announce(settings, "worker", given_options(args))
    return backend.run_worker(registry, context=context, settings=settings, argv=extra)


def cmd_scheduler(args: argparse.Namespace) -> int:
    registry = load_registry(args.registry)
    settings = command_settings(args)
    clock = load_clock(args.clock) if args.clock else None
    log_to_stderr()
    announce(settings, "scheduler", given_options(args))
    return run_scheduler(registry, settings, context=load_context(args.context), clock=clock)


def program_name() -> str:
    """How the command was called: `jobs-core` (the console script) or `python -m jobs_core`."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "jobs-core" if called.startswith("jobs-core") else "python -m jobs_core"


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog=program_name(), description=summary)
    sub = parser.add_subparsers(dest="command", required=True)
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument(
        "--backend",
        metavar="NAME",
        help="inline, inngest, celery, dramatiq or package.module:factory (default: $JOBS_BACKEND)",
    )

    p_list = sub.add_parser("list", help="list the jobs of a registry")
    p_list.add_argument("registry", metavar="APP:REGISTRY")
    p_list.add_argument("--json", action="store_true", help="print JSON")

    p_dispatch = sub.add_parser(
        "dispatch", parents=[backend], help="dispatch one job through the backend"
    )
    p_dispatch.add_argument("registry", metavar="APP:REGISTRY")
    p_dispatch.add_argument("name", help="the job's name")
    p_dispatch.add_argument("payload", metavar="JSON", help="the payload as a JSON object")
    p_dispatch.add_argument("--delay", type=float, default=0.0, help="seconds to wait")
    p_dispatch.add_argument("--idempotency-key", default=None)
    p_dispatch.add_argument("--context", metavar="MODULE:FACTORY", help="inline only")

    p_worker = sub.add_parser(
        "worker", parents=[backend], help="run the backend's worker for a registry"
    )
    p_worker.add_argument("registry", metavar="APP:REGISTRY")
    p_worker.add_argument("--context", metavar="MODULE:FACTORY", help="context or factory")

    p_scheduler = sub.add_parser(
        "scheduler",
        parents=[backend],
        help="dispatch the registry's schedules through the backend (any replicas)",
    )
    p_scheduler.add_argument("registry", metavar="APP:REGISTRY")
    p_scheduler.add_argument("--context", metavar="MODULE:FACTORY", help="inline only")
    p_scheduler.add_argument(
        "--clock", metavar="MODULE:NAME", help="a jobs_core.scheduler.Clock (or a factory of one)"
    )

    p_relay = sub.add_parser(
        "relay", parents=[backend], help="send committed outbox rows through the backend"
    )
    p_relay.add_argument("registry", metavar="APP:REGISTRY")
    p_relay.add_argument(
        "--database-url",
        default=os.environ.get("JOBS_DATABASE_URL"),
        help="SQLAlchemy URL of the outbox's database (default: $JOBS_DATABASE_URL)",
    )
    p_relay.add_argument("--context", metavar="MODULE:FACTORY", help="inline backend only")
    p_relay.add_argument("--batch-size", type=int, default=200, help="rows per round")
    p_relay.add_argument("--poll-interval", type=float, default=1.0, help="idle seconds")
    p_relay.add_argument("--once", action="store_true", help="one round, print the count")
    p_relay.add_argument("--create-table", action="store_true", help="create missing tables")
    p_relay.add_argument(
        "--requeue-failed", action="store_true", help="put failed rows back to pending, exit"
    )
    return parser


def import_from_here() -> None:
    """Put the current directory first on `sys.path`, as `python -m` does, so that the
    `jobs-core` console script finds the app's modules (`myapp.jobs:jobs`) where it runs."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (`jobs-core`, `python -m jobs_core`): returns the exit status."""
    import_from_here()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "dispatch":
            return cmd_dispatch(args)
        if args.command == "scheduler":
            return cmd_scheduler(args)
        if args.command == "relay":
            from .outbox.cli import cmd_relay

            return cmd_relay(args)
        return cmd_worker(args, extra)
    except JobsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
