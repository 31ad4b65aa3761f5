"""A client that goes away while its request waits: its queued rows are dropped before any model work
and its admission permit is given back (gateway.deps.until_disconnect). The app is called as uvicorn
calls it; the encoder is replaced by one that holds its batch until released, so the next request
queues behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.app import create_app
from services.config import Settings
from services.runtime import Runtime

MODEL = "all-minilm-l6-v2"


class Held:
    """An encoder whose batches wait for `release`; records each batch's size."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.batches: list[int] = []

    async def __call__(self, rows: list[Any]) -> np.ndarray:
        self.batches.append(len(rows))
        await self.release.wait()
        return np.ones((len(rows), 384), np.float32)


async def call(app: Any, text: str, gone_after: float | None) -> list[dict[str, Any]]:
    """POST /v1/embeddings through the ASGI app; the client disconnects `gone_after` seconds in."""
    body = orjson.dumps({"model": MODEL, "input": text})
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    started = asyncio.get_running_loop().time()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        if gone_after is None:
            await asyncio.Event().wait()  # connected for good
        await asyncio.sleep(max(0.0, started + gone_after - asyncio.get_running_loop().time()))
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, Held]]:
    settings = Settings(data_dir=tmp_path, triton_url="127.0.0.1:1", models=[MODEL], cache_backend="none")
    runtime = Runtime.build(settings)
    app = create_app(settings, runtime)
    async with app.router.lifespan_context(app):
        embedder = runtime.embedder
        batcher = embedder.batcher(embedder.spec(MODEL))
        held = Held()
        batcher.run = held
        yield app, batcher, held


async def _first_in_flight(app: Any, held: Held) -> asyncio.Task[list[dict[str, Any]]]:
    first = asyncio.create_task(call(app, "the first sentence", gone_after=None))
    while not held.batches:
        await asyncio.sleep(0.005)
    return first


async def test_a_client_gone_while_queued_loses_its_rows_and_permit(served: tuple[Any, Any, Held]) -> None:
    app, batcher, held = served
    first = await _first_in_flight(app, held)
    second = asyncio.create_task(call(app, "the second sentence", gone_after=0.2))
    await asyncio.sleep(0.1)  # queued behind the first: its permit and row are held
    assert batcher.depth() == 1 and batcher.admitted["online"] == 2
    sent = await asyncio.wait_for(second, 5)
    assert sent[0]["status"] == 499  # what was sent into the closed connection: nobody reads it
    assert batcher.depth() == 0 and batcher.admitted["online"] == 1  # only the first one's permit
    held.release.set()
    assert (await asyncio.wait_for(first, 5))[0]["status"] == 200
    await asyncio.sleep(0.05)
    assert held.batches == [1]  # the second sentence never reached the encoder
