"""Settings of the Django test project: a shop whose orders dispatch jobs through the outbox.

The database is `DJANGO_DATABASE_URL` (sqlite:///path or postgresql+psycopg://user@host:port/db),
the broker `SHOP_BROKER_URL`; `SHOP_BACKEND` may name a wrapping backend factory (see
shop/testing.py) for the tests that count or interrupt sends.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit


def _database(url: str) -> dict[str, Any]:
    if url.startswith("sqlite:///"):
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": url[len("sqlite:///") :],
            # Write-ahead log, synced at checkpoints: what a Django site on SQLite with a worker
            # and relays writing at once is set up with (a rollback journal synced on every
            # commit made the worker's 5,000 deliveries take a minute).
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"},
        }
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


SECRET_KEY = "django-test-project-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "Europe/Paris"
INSTALLED_APPS = ["jobs_core.contrib.django", "shop"]
DATABASES = {"default": _database(os.environ["DJANGO_DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

JOBS = {
    "BACKEND": os.environ.get("SHOP_BACKEND", "dramatiq"),
    "BROKER_URL": os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:1/0"),
    "QUEUE": "shop",
    "DISPATCH_TIMEOUT": 2,
    "REGISTRY": "shop.jobs:jobs",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
