"""`manage.py jobs_scheduler`: run the registry's schedules (`python -m jobs_core scheduler`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs_core.contrib.django.settings import _jobs, jobs_settings


class Command(BaseCommand):
    help = "Dispatch the registry's schedules on time (Celery and Dramatiq backends)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--registry", help='default: settings.JOBS["REGISTRY"]')
        parser.add_argument("scheduler_args", nargs=argparse.REMAINDER)

    def handle(self, *args: Any, **options: Any) -> None:
        registry = options["registry"] or _jobs().get("REGISTRY")
        if not registry:
            raise CommandError('name your JobRegistry in settings.JOBS["REGISTRY"]')
        # The scheduler command reads its settings from the environment: hand it settings.JOBS.
        settings = jobs_settings()
        os.environ.update(
            {
                "JOBS_BACKEND": settings.backend,
                "JOBS_BROKER_URL": settings.broker_url,
                "JOBS_QUEUE": settings.queue,
                "JOBS_DISPATCH_TIMEOUT": str(settings.dispatch_timeout),
                "JOBS_MAX_PAYLOAD_BYTES": str(settings.max_payload_bytes),
                "INNGEST_APP_NAME": settings.inngest_app_name,
            }
        )
        from jobs_core.__main__ import main

        extra = list(options["scheduler_args"])
        if extra[:1] == ["--"]:
            extra = extra[1:]
        code = main(["scheduler", registry, *extra])
        if code:
            raise CommandError(f"the scheduler exited with {code}", returncode=code)
