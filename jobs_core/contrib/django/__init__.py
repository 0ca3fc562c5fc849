"""Django integration: the outbox as a model, `settings.JOBS`, on-commit dispatch, commands.

```python
INSTALLED_APPS = [..., "jobs_core.contrib.django"]
JOBS = {"BACKEND": "dramatiq", "BROKER_URL": "redis://...", "REGISTRY": "shop.jobs:jobs"}

from django.db import transaction
from jobs_core.contrib.django import outbox_dispatcher

with transaction.atomic():
    order = Order.objects.create(...)
    outbox_dispatcher().dispatch_sync(send_receipt, {"order_id": order.pk})
```

`manage.py migrate` creates the outbox tables; `manage.py jobs_relay` sends committed rows,
`manage.py jobs_worker` runs the configured backend's worker, `manage.py jobs_scheduler` the
schedules. `dispatch_on_commit(...)` is the plain `transaction.on_commit` hook, for jobs that
may be lost in a crash.
"""

from __future__ import annotations

from .dispatch import DjangoOutboxDispatcher, dispatch_on_commit, outbox_dispatcher
from .settings import get_dispatcher, jobs_context, jobs_registry, jobs_settings

__all__ = [
    "DjangoOutboxDispatcher",
    "dispatch_on_commit",
    "get_dispatcher",
    "jobs_context",
    "jobs_registry",
    "jobs_settings",
    "outbox_dispatcher",
]
