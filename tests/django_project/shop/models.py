from __future__ import annotations

from django.db import models


class Order(models.Model):
    number = models.IntegerField(unique=True)


class Delivery(models.Model):
    """One run of the `shop.deliver` job: a job that ran twice leaves two rows."""

    number = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)
