"""Job state and progress; a job is visible only to its tenant."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import JobsDep, TenantDep
from gateway.responses import json_response

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    job = await asyncio.to_thread(jobs.get, job_id, tenant)
    return json_response(job.public())
