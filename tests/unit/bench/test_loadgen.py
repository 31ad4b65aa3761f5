"""bench/loadgen.py's HTTP client against a loopback server that answers every way the servers it loads do:
Content-Length bodies, chunked bodies, 429 with Retry-After, a closed connection."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench import loadgen

ANSWERS = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\n[1.0]",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
    b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}",
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
]


async def serve(received: list[dict[str, object]], connections: list[int]) -> asyncio.Server:
    """Answers the n-th request (over all connections) with ANSWERS[n % 4]; closes after a `close`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.lower().split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
            received.append(json.loads(await reader.readexactly(length)))
            answer = ANSWERS[(len(received) - 1) % len(ANSWERS)]
            writer.write(answer)
            await writer.drain()
            if b"connection: close" in answer:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_one_client_reads_every_kind_of_answer_and_reconnects_after_a_close() -> None:
    async def main() -> tuple[dict[str, object], list[dict[str, object]], list[int]]:
        received: list[dict[str, object]] = []
        connections: list[int] = []
        server = await serve(received, connections)
        port = server.sockets[0].getsockname()[1]
        texts = ["a", "b", "c"]
        result = await loadgen.run(f"http://127.0.0.1:{port}", "m", texts, 1, 2, 8, 10.0, {"X-Key": "k"})
        server.close()
        return result, received, connections

    result, received, connections = asyncio.run(main())
    assert result["requests"] == 8
    assert result["statuses"] == {200: 4, 429: 2, 503: 2}
    assert result["sentences_per_s"] > 0 and result["loadgen_cpu_ms_per_request"] >= 0
    # batch 2 from each start in turn, wrapping around the texts
    assert [r["input"] for r in received[:3]] == [["a", "b"], ["c", "a"], ["b", "c"]]
    assert all(r["model"] == "m" for r in received)
    assert len(connections) == 2  # the 503 closed the first connection; the client opened one more


def test_refuses_a_non_loopback_target_before_any_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[tuple[object, ...]] = []

    async def recording_connect(*args: object, **kwargs: object) -> None:  # records, never connects
        attempts.append(args)
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(asyncio, "open_connection", recording_connect)
    with pytest.raises(SystemExit, match="non-loopback"):
        asyncio.run(loadgen.run("http://10.0.0.1:80", "m", ["a"], 1, 1, 1, 1.0, {}))
    assert attempts == []
