"""`manage.py jobs_relay`: send committed outbox rows through the configured backend."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs_core.contrib.django.settings import jobs_context, jobs_registry, jobs_settings
from jobs_core.contrib.django.store import DjangoStore
from jobs_core.outbox.relay import Relay, serve


class Command(BaseCommand):
    help = "Send committed outbox rows through settings.JOBS's backend (until SIGTERM)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("registry", nargs="?", help='default: settings.JOBS["REGISTRY"]')
        parser.add_argument("--database", default="default", help="the outbox's database")
        parser.add_argument("--batch-size", type=int, default=200)
        parser.add_argument("--poll-interval", type=float, default=1.0)
        parser.add_argument("--once", action="store_true", help="one round, print the count")
        parser.add_argument(
            "--requeue-failed", action="store_true", help="put failed rows back to pending"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=logging.INFO,
                format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
            )
        store = DjangoStore(options["database"])
        if options["requeue_failed"]:
            self.stdout.write(json.dumps({"requeued": store.requeue_failed()}))
            return
        registry = jobs_registry(options["registry"])
        from jobs_core.backend import dispatcher_factory

        settings = jobs_settings()
        dispatcher = dispatcher_factory(settings.backend)(
            settings, context=jobs_context(), instrumentation=None
        )
        relay = Relay(
            store,
            dispatcher,
            registry,
            batch_size=options["batch_size"],
            poll_interval=options["poll_interval"],
        )
        try:
            if options["once"]:
                try:
                    self.stdout.write(json.dumps({"sent": relay.run_once()}))
                finally:
                    relay.close()
                return
            logging.getLogger("jobs_core.outbox").info(
                "outbox relay %s: database %r -> %s",
                relay.owner,
                options["database"],
                settings.backend,
            )
            serve(relay)
        finally:
            close = getattr(dispatcher, "close", None)
            if close is not None:
                close()
