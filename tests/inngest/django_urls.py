"""The URLconf of the Django serving test: it puts `serve_django(...)`'s pattern here."""

from typing import Any

urlpatterns: list[Any] = []
