"""API keys -> tenants, with a per-key token bucket.

Keys come from settings (`api_keys`, JSON in the environment) and/or `api_keys_file` (YAML or JSON:
`{key: tenant}` or `{key: {tenant, rate, burst}}`). With no key configured the gateway is open and every
caller is tenant `public`; `embedfleet serve` only allows that on a loopback address.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import yaml

from services.config import Settings
from services.errors import ConfigError, RateLimited, Unauthorized

PUBLIC_TENANT = "public"


@dataclass
class KeyPolicy:
    tenant: str
    rate: float
    burst: int


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, n: float = 1.0) -> float:
        """0 when allowed, else seconds until `n` tokens are available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


def load_keys(settings: Settings) -> dict[str, KeyPolicy]:
    default = (settings.rate_limit_rps, settings.rate_limit_burst)
    raw: dict[str, object] = dict(settings.api_keys)
    if settings.api_keys_file is not None:
        try:
            loaded = yaml.safe_load(settings.api_keys_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"api_keys_file {settings.api_keys_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"api_keys_file {settings.api_keys_file}: expected a mapping of key -> tenant")
        raw.update(loaded)
    keys = {}
    for key, value in raw.items():
        if isinstance(value, str):
            keys[str(key)] = KeyPolicy(value, *default)
        elif isinstance(value, dict) and isinstance(value.get("tenant"), str):
            keys[str(key)] = KeyPolicy(
                value["tenant"], float(value.get("rate", default[0])), int(value.get("burst", default[1]))
            )
        else:
            raise ConfigError(
                f"api key {str(key)[:4]}…: value must be a tenant id or {{tenant, rate, burst}}"
            )
    return keys


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.keys = load_keys(settings)
        self.retry_after_s = settings.retry_after_s
        self._buckets: dict[str, TokenBucket] = {}
        self._open_bucket = TokenBucket(1e9, 1_000_000_000)

    @property
    def open(self) -> bool:
        return not self.keys

    def authenticate(self, authorization: str | None, api_key_header: str | None) -> str:
        """Return the tenant id, or raise 401 / 429."""
        if self.open:
            return PUBLIC_TENANT
        key = api_key_header
        if authorization:
            scheme, _, token = authorization.partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        policy = self.keys.get(key or "")
        if policy is None:
            raise Unauthorized(
                "missing or invalid API key (send 'Authorization: Bearer <key>')", field="authorization"
            )
        bucket = self._buckets.get(key or "")
        if bucket is None:
            bucket = self._buckets[key or ""] = TokenBucket(policy.rate, policy.burst)
        wait = bucket.take()
        if wait > 0:
            raise RateLimited(
                f"rate limit of {policy.rate:g} requests/s exceeded for this key",
                retry_after=max(wait, self.retry_after_s),
            )
        return policy.tenant
