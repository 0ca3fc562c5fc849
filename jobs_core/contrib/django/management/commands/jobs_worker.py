"""`manage.py jobs_worker [-- backend options]`: run settings.JOBS's backend worker."""

from __future__ import annotations

import argparse
from typing import Any

from django.conf import settings as dj_settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs_core.backend import load_backend
from jobs_core.contrib.django.settings import jobs_context, jobs_registry, jobs_settings


class Command(BaseCommand):
    help = (
        "Run the worker of settings.JOBS's backend for the registry; options after `--` go to "
        "the backend's worker (as with `python -m jobs_core worker`)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--registry", help='default: settings.JOBS["REGISTRY"]')
        parser.add_argument("worker_args", nargs=argparse.REMAINDER)

    def handle(self, *args: Any, **options: Any) -> None:
        settings = jobs_settings()
        if settings.backend == "inline" or ":" in settings.backend:
            raise CommandError(
                f"settings.JOBS BACKEND is {settings.backend!r}: jobs_worker starts the "
                "celery, dramatiq or inngest worker"
            )
        extra = list(options["worker_args"])
        if extra[:1] == ["--"]:
            extra = extra[1:]
        jobs = dj_settings.JOBS if isinstance(getattr(dj_settings, "JOBS", None), dict) else {}
        registry_path = options["registry"] or jobs.get("REGISTRY")
        # a worker that starts another process (dramatiq) imports them there by these paths
        settings = settings.model_copy(
            update={"registry": registry_path, "context": jobs.get("CONTEXT")}
        )
        code = load_backend(settings.backend).run_worker(
            jobs_registry(registry_path), context=jobs_context(), settings=settings, argv=extra
        )
        if code:
            raise CommandError(f"the worker exited with {code}", returncode=int(code))
