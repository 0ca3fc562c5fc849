"""Integrations with web frameworks (each needs its own extra): `jobs_core.contrib.django`."""
