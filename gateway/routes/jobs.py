"""Job state and progress; a job is visible only to its tenant."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import FleetDep, TenantDep
from gateway.routes.embeddings import json_response

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    job = await asyncio.to_thread(fleet.runtime.jobs.get, job_id, tenant)
    return json_response(job.public())
