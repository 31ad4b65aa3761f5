"""Background work: indexing jobs (records.py) and the dispatcher that runs them and migration steps
in-process or on Celery with one retry policy (dispatch.py)."""

from services.jobs.records import RUNNING, Job, JobStore, RedisJobStore, SqliteJobStore, make_job_store

__all__ = ["RUNNING", "Job", "JobStore", "RedisJobStore", "SqliteJobStore", "make_job_store"]
