"""SSRF policy of media fetching, run end to end with a stub resolver and a connector that only records.

No test here opens a socket: the connector hands httpcore an in-memory stream with a canned response.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import pytest

from services.config import Settings
from services.errors import Forbidden, InvalidInput, PayloadTooLarge, Unprocessable
from services.media.fetch import Fetcher, is_public_address, load_media_field, vet_url

PUBLIC = "93.184.216.34"
CDN = "151.101.1.1"
MAX = 10_000


class StubResolver:
    """host -> addresses from a table; records every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table, self.calls = table, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError("NXDOMAIN")
        return self.table[host]


class RecordingStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], sent: list[bytes]) -> None:
        super().__init__(buffer)
        self.sent = sent

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.sent.append(buffer)


class RecordingConnector(httpcore.AsyncNetworkBackend):
    """Records (ip, port) and the bytes written; answers with the canned response for that ip."""

    def __init__(self, responses: dict[str, bytes]) -> None:
        self.responses, self.connects, self.sent = responses, [], []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return RecordingStream([self.responses[host]], self.sent)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("never used")

    async def sleep(self, seconds: float) -> None:
        return None


def ok(body: bytes = b"GIF89a-pretend", *, chunked: bool = False) -> bytes:
    if chunked:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def redirect(location: str, status: int = 302) -> bytes:
    return b"HTTP/1.1 %d Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (status, location.encode())


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: any real connect or DNS lookup from this module fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to use the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def settings() -> Settings:
    return Settings(fetch_enabled=True, fetch_allowed_hosts=["img.example.com", "*.cdn.example.net"])


def make(settings: Settings, table: dict[str, list[str]], responses: dict[str, bytes]):
    resolver, connector = StubResolver(table), RecordingConnector(responses)
    return Fetcher(settings, resolver=resolver, connector=connector), resolver, connector


async def test_allowed_public_host_is_fetched_from_the_vetted_address(settings: Settings) -> None:
    fetcher, resolver, conn = make(settings, {"img.example.com": [PUBLIC]}, {PUBLIC: ok()})
    assert (
        await fetcher.fetch("http://img.example.com/a.gif?x=1#frag", max_bytes=MAX, field="f")
        == b"GIF89a-pretend"
    )
    assert resolver.calls == ["img.example.com"] and conn.connects == [(PUBLIC, 80)]
    request = b"".join(conn.sent)
    assert request.startswith(b"GET /a.gif?x=1 HTTP/1.1\r\n") and b"Host: img.example.com\r\n" in request


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1",
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "fec0::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::a9fe:a9fe",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "::127.0.0.1",
    ],
)
async def test_private_addresses_after_dns_are_refused(settings: Settings, bad: str) -> None:
    assert not is_public_address(bad)
    fetcher, _, conn = make(settings, {"img.example.com": [bad]}, {})
    with pytest.raises(Forbidden, match="non-public"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="inputs[0].image")
    assert conn.connects == []


async def test_one_private_address_among_public_ones_is_refused(settings: Settings) -> None:
    fetcher, _, conn = make(settings, {"img.example.com": [PUBLIC, "127.0.0.1"]}, {PUBLIC: ok()})
    with pytest.raises(Forbidden):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")
    assert conn.connects == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x"]
)
async def test_ip_literals_refused_even_when_allowlisted(settings: Settings, url: str) -> None:
    host = url.split("/")[2].strip("[]")
    allowed = settings.model_copy(update={"fetch_allowed_hosts": [host]})
    fetcher, resolver, conn = make(allowed, {}, {})
    with pytest.raises(Forbidden):
        await fetcher.fetch(url, max_bytes=MAX, field="f")
    assert conn.connects == [] and resolver.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example.org/a.png",
        "http://127.0.0.1/a.png",
        "http://169.254.169.254/",
        "http://cdn.example.net/x",
    ],
)
async def test_host_not_on_allowlist_refused_before_dns(settings: Settings, url: str) -> None:
    fetcher, resolver, conn = make(settings, {}, {})
    with pytest.raises(Forbidden, match="allowlist"):
        await fetcher.fetch(url, max_bytes=MAX, field="f")
    assert resolver.calls == [] and conn.connects == []


async def test_fetching_disabled(settings: Settings) -> None:
    off = settings.model_copy(update={"fetch_enabled": False})
    fetcher, resolver, conn = make(off, {"img.example.com": [PUBLIC]}, {PUBLIC: ok()})
    with pytest.raises(Forbidden, match="disabled"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")
    with pytest.raises(Forbidden, match="disabled"):
        await load_media_field("http://img.example.com/a.png", off, max_bytes=MAX, field="f")
    assert resolver.calls == [] and conn.connects == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://img.example.com/a.png",
        "file:///etc/passwd",
        "http://user:pw@img.example.com/a.png",
        "http:///x",
    ],
)
def test_bad_urls_are_400(settings: Settings, url: str) -> None:
    with pytest.raises(InvalidInput):
        vet_url(url, settings, field="f")


async def test_redirect_to_disallowed_host_refused(settings: Settings) -> None:
    fetcher, resolver, conn = make(
        settings,
        {"img.example.com": [PUBLIC]},
        {PUBLIC: redirect("http://169.254.169.254/latest/meta-data/")},
    )
    with pytest.raises(Forbidden, match="allowlist"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")
    assert conn.connects == [(PUBLIC, 80)] and resolver.calls == ["img.example.com"]


async def test_redirect_to_allowed_host_that_resolves_private_refused(settings: Settings) -> None:
    table = {"img.example.com": [PUBLIC], "a.cdn.example.net": ["10.0.0.7"]}
    fetcher, _, conn = make(settings, table, {PUBLIC: redirect("http://a.cdn.example.net/a.png")})
    with pytest.raises(Forbidden, match="non-public"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")
    assert conn.connects == [(PUBLIC, 80)]


async def test_redirect_to_allowed_host_is_followed_and_revetted(settings: Settings) -> None:
    table = {"img.example.com": [PUBLIC], "a.cdn.example.net": [CDN]}
    responses = {PUBLIC: redirect("//a.cdn.example.net/real.png", 301), CDN: ok(b"PNGDATA")}
    fetcher, resolver, conn = make(settings, table, responses)
    assert await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f") == b"PNGDATA"
    assert conn.connects == [(PUBLIC, 80), (CDN, 80)] and resolver.calls == [
        "img.example.com",
        "a.cdn.example.net",
    ]


async def test_redirect_loop_stops(settings: Settings) -> None:
    fetcher, _, conn = make(settings, {"img.example.com": [PUBLIC]}, {PUBLIC: redirect("/again")})
    with pytest.raises(Unprocessable, match="redirects"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")
    assert len(conn.connects) == 4  # the first request and three redirects


@pytest.mark.parametrize("chunked", [False, True])
async def test_byte_cap(settings: Settings, chunked: bool) -> None:
    fetcher, _, _ = make(settings, {"img.example.com": [PUBLIC]}, {PUBLIC: ok(b"x" * 5000, chunked=chunked)})
    with pytest.raises(PayloadTooLarge):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=1000, field="f")


async def test_upstream_error_status_and_unresolvable_host(settings: Settings) -> None:
    fetcher, _, _ = make(
        settings,
        {"img.example.com": [PUBLIC]},
        {PUBLIC: b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"},
    )
    with pytest.raises(Unprocessable, match="404"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")
    fetcher, _, _ = make(settings, {}, {})
    with pytest.raises(Unprocessable, match="resolve"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")


async def test_slow_upstream_hits_the_deadline(settings: Settings) -> None:
    class Hanging(RecordingConnector):
        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore.AsyncNetworkStream:
            import asyncio

            await asyncio.sleep(30)

    fast = settings.model_copy(update={"fetch_timeout_s": 0.05})
    fetcher = Fetcher(fast, resolver=StubResolver({"img.example.com": [PUBLIC]}), connector=Hanging({}))
    with pytest.raises(Unprocessable, match="longer than"):
        await fetcher.fetch("http://img.example.com/a.png", max_bytes=MAX, field="f")


async def test_load_media_field_inline_and_url(settings: Settings) -> None:
    fetcher, _, _ = make(settings, {"img.example.com": [PUBLIC]}, {PUBLIC: ok(b"BYTES")})
    assert await load_media_field("QllURVM=", settings, max_bytes=MAX, field="f") == b"BYTES"
    assert (
        await load_media_field(
            "http://img.example.com/a", settings, max_bytes=MAX, field="f", fetcher=fetcher
        )
        == b"BYTES"
    )
