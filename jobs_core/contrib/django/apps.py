"""The Django app: add `"jobs_core.contrib.django"` to `INSTALLED_APPS` (label `jobs_core`)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class JobsCoreConfig(AppConfig):
    name = "jobs_core.contrib.django"
    label = "jobs_core"
    verbose_name = "Background jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.register(check_settings, checks.Tags.compatibility)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The outbox keeps its times in UTC: it needs `USE_TZ = True` (Django's default)."""
    errors: list[checks.CheckMessage] = []
    if not settings.USE_TZ:
        errors.append(
            checks.Error(
                "jobs_core's outbox needs USE_TZ = True: its rows hold UTC times",
                id="jobs_core.E001",
            )
        )
    jobs = getattr(settings, "JOBS", {})
    if not isinstance(jobs, dict):
        errors.append(checks.Error("settings.JOBS must be a dict", id="jobs_core.E002"))
    return errors
