"""SSRF-safe fetching of media URLs (off unless `settings.fetch_enabled`).

A URL is fetched only if its scheme is http(s), its host is on `fetch_allowed_hosts`, and *every*
address the host resolves to is public (no loopback, private, link-local, CGNAT, multicast, reserved or
unspecified range, including IPv4 embedded in IPv6: mapped, 6to4, Teredo, NAT64). The connection then
goes to the vetted address itself, never through a second DNS lookup, so DNS rebinding cannot swap the
target; TLS still verifies the certificate for the host name. Redirects are followed by hand, each hop
vetted again, at most `MAX_REDIRECTS`. The body is streamed and cut at the byte cap; the whole fetch,
DNS included, runs under one deadline (`fetch_timeout_s`).

The resolver and the connector (an `httpcore.AsyncNetworkBackend`) are injectable, so tests run the
whole policy with a stub resolver and a recording connector that never opens a socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore

from services.config import Settings
from services.errors import EmbedfleetError, Forbidden, InvalidInput, PayloadTooLarge, Unprocessable
from services.media.images import RemoteMedia, parse_image_field

MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> IP address strings. The default asks the system resolver."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public_address(addr: str) -> bool:
    """True only for a globally routable unicast address; IPv4 hidden inside IPv6 is judged as IPv4."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo or ip.is_site_local:
            return False  # Teredo tunnels to an arbitrary IPv4 host; site-local is private
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    elif ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Exact host match, or `*.example.com` for any subdomain of example.com (not example.com itself)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
            return True
        if host == entry:
            return True
    return False


@dataclass(frozen=True)
class Target:
    """A URL that passed the static checks: what to request and which host name to resolve."""

    url: str  # normalised: scheme://host[:port]/path?query, no credentials, no fragment
    scheme: str
    host: str
    port: int
    host_header: str


def vet_url(url: str, settings: Settings, *, field: str) -> Target:
    """Static policy: fetching on, http(s), no credentials, ASCII, host on the allowlist."""
    if not settings.fetch_enabled:
        raise Forbidden("fetching media from URLs is disabled on this server", field=field)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidInput("malformed URL", field=field) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(f"URL scheme {scheme!r} is not allowed (http/https only)", field=field)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("URLs with credentials are not allowed", field=field)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidInput("URL has no host", field=field)
    if not (host + parts.path + parts.query).isascii():
        raise InvalidInput("URL must be ASCII (punycode / percent-encoded)", field=field)
    if not host_allowed(host, settings.fetch_allowed_hosts):
        raise Forbidden(f"host {host!r} is not on the fetch allowlist", field=field)
    port = port or _DEFAULT_PORTS[scheme]
    bracketed = f"[{host}]" if ":" in host else host
    netloc = bracketed if port == _DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(f"{scheme}://{netloc}{path}", scheme, host, port, netloc)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the vetted IP whatever host httpcore asks for (the host still drives SNI and Host)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, host: str, ip: str) -> None:
        self._inner, self._host, self._ip = inner, host, ip

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host.strip("[]").lower() != self._host:
            raise httpcore.ConnectError(f"refusing to connect for unexpected host {host!r}")
        return await self._inner.connect_tcp(
            self._ip, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for fetching")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class Fetcher:
    """Fetches media URLs under the settings' policy. One per process; safe to share between tasks."""

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver = system_resolver,
        connector: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._resolve = resolver
        self._connector = connector or httpcore.AnyIOBackend()
        self._ssl = ssl_context or ssl.create_default_context()

    async def fetch(self, url: str, *, max_bytes: int, field: str) -> bytes:
        """The body of `url` (after vetted redirects), at most `max_bytes`, within `fetch_timeout_s`."""
        try:
            async with asyncio.timeout(self.settings.fetch_timeout_s):
                return await self._follow(url, max_bytes, field)
        except TimeoutError:
            raise Unprocessable(
                f"fetching the URL took longer than {self.settings.fetch_timeout_s:g} s", field=field
            ) from None

    async def _follow(self, url: str, max_bytes: int, field: str) -> bytes:
        for _hop in range(MAX_REDIRECTS + 1):
            target = vet_url(url, self.settings, field=field)
            ip = await self._vetted_address(target, field)
            status, location, body = await self._get(target, ip, max_bytes, field)
            if status in _REDIRECTS:
                if not location:
                    raise Unprocessable(f"redirect ({status}) without a Location", field=field)
                url = urljoin(target.url, location)
                continue
            if not 200 <= status < 300:
                raise Unprocessable(f"the media URL answered HTTP {status}", field=field)
            if not body:
                raise InvalidInput("the media URL returned zero bytes", field=field)
            return body
        raise Unprocessable(f"more than {MAX_REDIRECTS} redirects", field=field)

    async def _vetted_address(self, target: Target, field: str) -> str:
        """Resolve once; refuse unless every address is public. Returns the address to connect to."""
        try:
            ipaddress.ip_address(target.host)
            addresses = [target.host]
        except ValueError:
            try:
                addresses = await self._resolve(target.host, target.port)
            except (OSError, UnicodeError):
                raise Unprocessable(f"cannot resolve host {target.host!r}", field=field) from None
        if not addresses:
            raise Unprocessable(f"cannot resolve host {target.host!r}", field=field)
        if not all(is_public_address(a) for a in addresses):
            raise Forbidden(f"host {target.host!r} resolves to a non-public address", field=field)
        return addresses[0]

    async def _get(
        self, target: Target, ip: str, max_bytes: int, field: str
    ) -> tuple[int, str | None, bytes]:
        """One GET to the pinned address; redirects are returned, not followed. Body capped at max_bytes."""
        timeout = self.settings.fetch_timeout_s
        headers = [
            (b"Host", target.host_header.encode()),
            (b"Accept", b"image/*, video/*"),
            (b"Accept-Encoding", b"identity"),
            (b"User-Agent", b"embedfleet-fetch"),
            (b"Connection", b"close"),
        ]
        ext = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
        backend = _PinnedBackend(self._connector, target.host.lower(), ip)
        try:
            async with (
                httpcore.AsyncConnectionPool(
                    ssl_context=self._ssl, network_backend=backend, max_connections=1, retries=0
                ) as pool,
                pool.stream("GET", target.url, headers=headers, extensions=ext) as resp,
            ):
                head = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
                if resp.status in _REDIRECTS:
                    return resp.status, head.get("location"), b""
                if resp.status >= 300:
                    return resp.status, None, b""
                length = head.get("content-length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise PayloadTooLarge(
                        f"the media URL's body is {length} bytes; the limit is {max_bytes}", field=field
                    )
                body = bytearray()
                async for chunk in resp.aiter_stream():
                    body += chunk
                    if len(body) > max_bytes:
                        raise PayloadTooLarge(f"the media URL's body exceeds {max_bytes} bytes", field=field)
                return resp.status, None, bytes(body)
        except EmbedfleetError:
            raise
        except httpcore.TimeoutException:
            raise Unprocessable("fetching the URL timed out", field=field) from None
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            ssl.SSLError,
            OSError,
        ) as exc:
            raise Unprocessable(f"fetching the URL failed: {type(exc).__name__}", field=field) from None


async def load_media_field(
    value: str, settings: Settings, *, max_bytes: int, field: str, fetcher: Fetcher | None = None
) -> bytes:
    """A request's image/video field -> bytes: inline base64/data URI, or a URL fetched under policy."""
    parsed = parse_image_field(value, field=field, max_bytes=max_bytes)
    if not isinstance(parsed, RemoteMedia):
        return parsed
    if fetcher is None:
        vet_url(parsed.url, settings, field=field)  # the policy's own refusal when fetching is off
        fetcher = Fetcher(settings)
    return await fetcher.fetch(parsed.url, max_bytes=max_bytes, field=field)
