"""`manage.py place_orders FIRST COUNT`: create orders, each dispatching `shop.deliver` in the
order's transaction (`--mode outbox`, the default, or `--mode on_commit`); `--rollback` rolls
the transaction back, `--die-after-commit` SIGKILLs the process right after the commit."""

from __future__ import annotations

import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from shop.jobs import deliver
from shop.models import Order

from jobs_core.contrib.django import dispatch_on_commit, outbox_dispatcher


class Command(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("first", type=int)
        parser.add_argument("count", type=int)
        parser.add_argument("--mode", choices=["outbox", "on_commit"], default="outbox")
        parser.add_argument("--rollback", action="store_true")
        parser.add_argument("--die-after-commit", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        numbers = range(options["first"], options["first"] + options["count"])
        with transaction.atomic():
            Order.objects.bulk_create([Order(number=n) for n in numbers])
            if options["mode"] == "outbox":
                outbox_dispatcher().dispatch_many_sync([(deliver, {"number": n}) for n in numbers])
            else:
                for n in numbers:
                    dispatch_on_commit(deliver, {"number": n})
            if options["rollback"]:
                transaction.set_rollback(True)
        self.stdout.write("rolled back" if options["rollback"] else "committed")
        self.stdout.flush()
        if options["die_after_commit"]:
            os.kill(os.getpid(), signal.SIGKILL)
