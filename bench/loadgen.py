"""A bounded closed-loop load generator, run as its own process so it does not share the server's loop.

Each of `clients` coroutines sends `batch` sentences per request to a loopback URL until `requests`
requests are done or `seconds` pass, whichever is first. Prints one JSON line of results. With
`--bodies` (a JSON list of request bodies) it posts those in turn to `--path` instead, e.g. one image
per `/v1/embed` request; `batch` then says how many items one body carries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlparse

import numpy as np


def _loopback_only(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise SystemExit(f"refusing non-loopback target {host!r}")


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
    import aiohttp

    _loopback_only(url)
    latencies: list[float] = []
    by_status: dict[int, list[float]] = {}
    statuses: dict[int, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client(cid: int) -> None:
            nonlocal sent
            i = cid * batch if bodies is None else cid
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                if bodies is None:
                    body: dict[str, object] = {
                        "model": model,
                        "input": [texts[(i + k) % len(texts)] for k in range(batch)],
                    }
                    i += batch * clients
                else:
                    body, i = bodies[i % len(bodies)], i + clients
                t0 = time.perf_counter()
                async with session.post(f"{url}{path}", json=body) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    wait = float(r.headers.get("Retry-After", 0)) if r.status in (429, 503) else 0.0
                took = time.perf_counter() - t0
                latencies.append(took)
                by_status.setdefault(r.status, []).append(took)
                if honor_retry_after and wait:
                    await asyncio.sleep(wait)

        # warm-up: one request per client
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - started
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
