"""A bounded closed-loop load generator, run as its own process so it does not share the server's loop.

Each of `clients` coroutines sends `batch` sentences per request to a loopback URL until `requests`
requests are done or `seconds` pass, whichever is first. Prints one JSON line of results, with the
generator's own CPU seconds per request. With `--bodies` (a JSON list of request bodies) it posts those
in turn to `--path` instead, e.g. one image per `/v1/embed` request; `batch` then says how many items one
body carries.

The client is a minimal HTTP/1.1 keep-alive one over asyncio streams (on uvloop where installed), request
bytes encoded once up front: on a 2-core machine the load generator shares the cores with the server it
measures, and what it spends the served column loses while the in-process reference never pays it
(aiohttp's client: 0.37-0.45 ms of CPU a request, this one 0.15-0.17, bench/README.md). Every server in a
comparison (ours and the peers) is loaded by this same client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from urllib.parse import urlparse

import numpy as np


def _loopback_only(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise SystemExit(f"refusing non-loopback target {host!r}")
    return host, parsed.port or 80


def encode_request(host: str, port: int, path: str, body: object, headers: dict[str, str]) -> bytes:
    """One POST as wire bytes; the body is JSON, the connection kept alive."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Connection:
    """One keep-alive connection: write a request, read status, Retry-After and the whole body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    async def request(self, data: bytes) -> tuple[int, float]:
        reader, writer = await self.connect()
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, retry_after, chunked, close = -1, 0.0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                retry_after = float(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if chunked:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")  # the last chunk's trailer line
        elif length >= 0:
            await reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            await reader.read()
            close = True
        if close:
            self.close()
        return status, retry_after

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run(
    url: str,
    model: str,
    texts: list[str],
    clients: int,
    batch: int,
    requests: int,
    seconds: float,
    headers: dict[str, str],
    honor_retry_after: bool = False,
    path: str = "/v1/embeddings",
    bodies: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    """`honor_retry_after`: a refused client waits what Retry-After says before its next request, as the
    official OpenAI client does; otherwise it retries at once (a misbehaving client)."""
    host, port = _loopback_only(url)
    full_path = urlparse(url).path.rstrip("/") + path
    if bodies is None:  # the request starting at each sentence, encoded once
        wire = [
            encode_request(
                host,
                port,
                full_path,
                {"model": model, "input": [texts[(i + k) % len(texts)] for k in range(batch)]},
                headers,
            )
            for i in range(len(texts))
        ]
    else:
        wire = [encode_request(host, port, full_path, b, headers) for b in bodies]
    latencies: list[float] = []
    by_status: dict[int, list[float]] = {}
    statuses: dict[int, int] = {}
    sent = 0
    step = batch * clients if bodies is None else clients
    # Every client connects before the clock starts, as a client's keep-alive pool would have: a request's
    # latency is the server's answer to it, not the TCP handshakes of a few hundred sockets opened in the
    # same millisecond (with 256 clients they made every first refusal take 59-73 ms, 8% of a 12 s
    # overload run's 429s). A connection that drops is reopened inside the next request and counted there.
    conns = [Connection(host, port) for _ in range(clients)]
    connecting = time.perf_counter()
    await asyncio.gather(*(c.connect() for c in conns))
    connect_s = time.perf_counter() - connecting
    deadline = time.perf_counter() + seconds

    async def client(cid: int) -> None:
        nonlocal sent
        conn = conns[cid]
        i = cid * batch if bodies is None else cid
        try:
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                data, i = wire[i % len(wire)], i + step
                t0 = time.perf_counter()
                try:
                    status, wait = await conn.request(data)
                except (ConnectionError, asyncio.IncompleteReadError):  # counted as status 0, reconnects
                    conn.close()
                    status, wait = 0, 0.0
                took = time.perf_counter() - t0
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(took)
                by_status.setdefault(status, []).append(took)
                if honor_retry_after and wait and status in (429, 503):
                    await asyncio.sleep(wait)
        finally:
            conn.close()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    lat = np.asarray(latencies) * 1000
    ok = statuses.get(200, 0)
    return {
        "clients": clients,
        "batch": batch,
        "requests": len(latencies),
        "ok": ok,
        "statuses": statuses,
        "wall_s": wall,
        "sentences_per_s": ok * batch / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "by_status_ms": {
            str(code): {q: float(np.percentile(np.asarray(v) * 1000, int(q[1:]))) for q in ("p50", "p99")}
            for code, v in by_status.items()
        },
        "loadgen_cpu_ms_per_request": cpu * 1000 / max(1, len(latencies)),
        "connect_all_ms": connect_s * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--texts", help="JSON file with a list of strings")
    p.add_argument("--bodies", help="JSON file with a list of request bodies (instead of --texts)")
    p.add_argument("--path", default="/v1/embeddings")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--api-key")
    p.add_argument("--honor-retry-after", action="store_true")
    a = p.parse_args()
    if (a.texts is None) == (a.bodies is None):
        p.error("give --texts or --bodies")
    with open(a.texts or a.bodies) as f:
        data = json.load(f)
    texts, bodies = (data, None) if a.texts else ([], data)
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    try:  # uvloop (installed with uvicorn[standard]): a cheaper loop, as the gateway's uvicorn runs on
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(
            a.url,
            a.model,
            texts,
            a.clients,
            a.batch,
            a.requests,
            a.seconds,
            headers,
            a.honor_retry_after,
            a.path,
            bodies,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
