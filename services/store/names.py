"""Names, ids and the validation of what callers put in points: pure functions, no engine.

A collection is (tenant, name). Its physical collections (one per model version) get fresh names
derived from both; point ids are uuid5 over (tenant, collection, doc id), so a retried write lands on
the same point in any physical collection. Payload keys starting with `_` are reserved for the store.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from services.blobs import is_digest
from services.errors import InvalidInput

RESERVED_PREFIX = "_"
TENANT_KEY = "_tenant"
DOC_ID_KEY = "_doc_id"
SOURCE_KEY = "_source"
SOURCE_KINDS = ("text", "image", "video")

ALIAS_PREFIX = "efc_"
PHYSICAL_PREFIX = "efp_"
# point ids are uuid5 under this namespace: changing it would duplicate every re-indexed document
ID_NAMESPACE = uuid.UUID("6f1d3c5e-2b7a-4e0c-9a51-0c8e7b9d4f21")

MAX_TOP_K = 1000
MAX_DIMENSION = 65536
MAX_DOC_ID_CHARS = 512
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def validate_name(name: object) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise InvalidInput("collection name must match [a-z0-9][a-z0-9_-]{0,62}", field="name")
    return name


def tenant_hash(tenant: str) -> str:
    if not isinstance(tenant, str) or not tenant:
        raise InvalidInput("tenant must be a non-empty string", field="tenant")
    return sha256(tenant.encode()).hexdigest()[:32]


def alias_name(tenant: str, name: str) -> str:
    """`efc_<hash(tenant)>_<name>`: fixed-width hash then a validated name, so no two tenants collide."""
    return f"{ALIAS_PREFIX}{tenant_hash(tenant)}_{validate_name(name)}"


def _slug(value: str, limit: int) -> str:
    return _SLUG_RE.sub("-", value.lower()).strip("-")[:limit] or "x"


def physical_name(tenant: str, name: str, model: str, version: str) -> str:
    """A fresh physical name; readable for operators, unique by its random suffix."""
    return (
        f"{PHYSICAL_PREFIX}{tenant_hash(tenant)[:16]}_{validate_name(name)}_"
        f"{_slug(model, 40)}_{_slug(version, 16)}_{uuid.uuid4().hex[:8]}"
    )


def point_id(tenant: str, name: str, doc_id: str) -> str:
    """uuid5 over (tenant, collection, doc id): a retried write lands on the same point, in any physical."""
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([tenant, name, doc_id])))


def meta_id(tenant: str, name: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps(["collection", tenant, name])))


def query_slot_id(tenant: str, name: str, slot: int) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps(["query", tenant, name, slot])))


def validate_doc_id(doc_id: object) -> str:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOC_ID_CHARS:
        raise InvalidInput(f"document id must be a string of 1..{MAX_DOC_ID_CHARS} characters", field="id")
    return doc_id


def is_reserved(key: str) -> bool:
    # a quoted JSON-path root (`"_tenant".x`) names the same key as the bare one
    return key.lstrip('"').startswith(RESERVED_PREFIX)


def validate_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise InvalidInput("payload must be an object", field="payload")
    for key in payload:
        if not isinstance(key, str) or is_reserved(key):
            raise InvalidInput(
                f"payload key {key!r} is reserved (keys may not start with '_')", field="payload"
            )
    return dict(payload)


def validate_source(source: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if source is None:
        return None
    if not isinstance(source, Mapping) or len(source) != 1:
        raise InvalidInput("source must name exactly one of text, image, video", field="source")
    ((kind, value),) = source.items()
    if kind not in SOURCE_KINDS:
        raise InvalidInput(f"unknown source kind {kind!r}", field="source")
    if kind == "text" and not isinstance(value, str):
        raise InvalidInput("text source must be a string", field="source")
    if kind != "text" and not is_digest(value):
        raise InvalidInput(f"{kind} source must be a blob digest", field="source")
    return {kind: value}


def now() -> str:
    return datetime.now(UTC).isoformat()
