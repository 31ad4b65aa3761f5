"""Celery workers: thin wrappers over core functions (services.jobs)."""
