"""A model upgrade's typed record, and where a collection's reads and writes go, from ONE snapshot.

The record lives in the collection's metadata slot (the store keeps it opaque); this module is the only
one that reads or writes its fields. A search must not read the migration state at one moment and the
store target at another: across a cutover it would embed the query for one model and search the other
model's vectors (issue 20: a 768-d MPNet query sent to the 384-d MiniLM collection). So every read follows
a `ReadPlan` made from one `CollectionInfo`, each leg naming the physical collection it searches together
with the model that embeds for it, taken from that physical's own record; writes follow `write_targets`
from one snapshot as well, and re-check it after writing (services.indexing).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from services.store import CollectionInfo, PhysicalInfo


class State(StrEnum):
    sampling = "sampling"
    backfilling = "backfilling"
    cutover = "cutover"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"
    rolled_back = "rolled_back"


ACTIVE = frozenset({State.sampling, State.backfilling, State.cutover})  # reads stay on the source
Path = Literal["raw", "compensated", "merged", "v1_fallback"]


@dataclass(frozen=True)
class Version:
    model: str
    version: str


@dataclass(frozen=True)
class Compensation:
    requested: str  # auto | a kind
    kind: str | None = None  # the fitted one
    blob: str | None = None  # its saved parameters (blob digest); never shown
    report: dict[str, Any] | None = None
    pairs: dict[str, int] | None = None
    note: str | None = None


@dataclass(frozen=True)
class Backfill:
    done: int = 0
    total: int | None = None
    cursor: str | None = None  # the source's scroll offset: persisted, so a restarted step resumes
    started_at: float | None = None
    rate: float | None = None
    eta_s: float | None = None


@dataclass(frozen=True)
class Migration:
    id: str
    state: State
    source: Version
    source_physical: str
    target: str  # the new physical collection
    to: Version
    to_dimension: int
    compensator: Compensation
    backfill: Backfill = field(default_factory=Backfill)
    use_v1: bool = False  # no compensator beats v1 queries on v1: reads keep v1 (never worse)
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    cutover_at: float | None = None
    rolled_back_at: float | None = None
    source_dropped: bool = False

    @classmethod
    def new(cls, info: CollectionInfo, target: PhysicalInfo, compensator: str) -> Migration:
        return cls(
            id=uuid.uuid4().hex,
            state=State.sampling,
            source=Version(info.model, info.version),
            source_physical=info.physical,
            target=target.name,
            to=Version(target.model, target.version),
            to_dimension=target.dimension,
            compensator=Compensation(requested=compensator),
        )

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def but(self, **changes: Any) -> Migration:
        """A changed copy, stamped with the time of the change."""
        return replace(self, updated_at=time.time(), **changes)

    def to_dict(self) -> dict[str, Any]:
        """The stored shape (JSON): nested `source`/`to` as earlier records had them."""
        return {
            "id": self.id,
            "state": str(self.state),
            "source": {"physical": self.source_physical, **asdict(self.source)},
            "target": self.target,
            "to": {**asdict(self.to), "dimension": self.to_dimension},
            "compensator": {k: v for k, v in asdict(self.compensator).items() if v is not None},
            "backfill": asdict(self.backfill),
            "use_v1": self.use_v1,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "cutover_at": self.cutover_at,
            "rolled_back_at": self.rolled_back_at,
            "source_dropped": self.source_dropped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Migration:
        src, to = d["source"], d["to"]
        return cls(
            id=d["id"],
            state=State(d["state"]),
            source=Version(src["model"], src["version"]),
            source_physical=src["physical"],
            target=d["target"],
            to=Version(to["model"], to["version"]),
            to_dimension=int(to["dimension"]),
            compensator=Compensation(**d.get("compensator", {"requested": "auto"})),
            backfill=Backfill(**d.get("backfill", {})),
            use_v1=bool(d.get("use_v1", False)),
            error=d.get("error"),
            created_at=d.get("created_at", 0.0),
            updated_at=d.get("updated_at", 0.0),
            cutover_at=d.get("cutover_at"),
            rolled_back_at=d.get("rolled_back_at"),
            source_dropped=bool(d.get("source_dropped", False)),
        )

    def public(self) -> dict[str, Any]:
        """What the API shows: no physical collection names, no compensator blob."""
        bf = self.backfill
        return {
            "id": self.id,
            "state": str(self.state),
            "from": asdict(self.source),
            "to": {**asdict(self.to), "dimension": self.to_dimension},
            "compensator": {
                k: v for k, v in asdict(self.compensator).items() if k != "blob" and v is not None
            },
            "reads_use_v1": self.use_v1,
            "progress": {
                "done": bf.done,
                "total": bf.total,
                "ratio": (bf.done / bf.total) if bf.total else None,
                "rate": bf.rate,
                "eta_s": bf.eta_s,
            },
            "error": self.error,
        }


def migration_of(info: CollectionInfo) -> Migration | None:
    """The collection's migration record, typed (None when it never had one)."""
    return None if info.migration is None else Migration.from_dict(info.migration)


@dataclass(frozen=True)
class Leg:
    """One store search: the physical collection and how its query vector is made.

    `model` embeds the query; with `compensator` (a blob digest) its vector is mapped into the
    physical's space, otherwise `model` is the physical's own model and the vector is cut to its size.
    """

    physical: PhysicalInfo
    model: str
    compensator: str | None = None


@dataclass(frozen=True)
class ReadPlan:
    path: Path
    legs: tuple[Leg, ...]  # two legs are fused by rank
    model: str  # the model a response reports


def _raw(phys: PhysicalInfo) -> Leg:
    return Leg(phys, phys.model)


def read_plan(info: CollectionInfo, *, text: bool, merge: bool = False) -> ReadPlan:
    """The plan for one search of `info` as it was read.

    - no migration in progress: `raw` on the current physical;
    - migrating, text query, a fitted compensator that beats v1: `compensated` (v2 query mapped into the
      source's space); with `merge`, also raw v2 on the target, fused by rank (`merged`);
    - migrating otherwise (sampling, v1 queries win, media queries): `v1_fallback` on the source.
    """
    mig = migration_of(info)
    if mig is None or not mig.active:
        return ReadPlan("raw", (_raw(info.current),), info.current.model)
    source = info.physical_info(mig.source_physical)
    blob = mig.compensator.blob
    if text and blob and not mig.use_v1 and mig.state is not State.sampling:
        compensated = Leg(source, mig.to.model, blob)
        if merge:
            return ReadPlan("merged", (compensated, _raw(info.physical_info(mig.target))), mig.to.model)
        return ReadPlan("compensated", (compensated,), mig.to.model)
    return ReadPlan("v1_fallback", (_raw(source),), source.model)


def write_targets(info: CollectionInfo) -> tuple[PhysicalInfo, ...]:
    """Every physical collection the collection has, the live one first.

    Besides the live one that is the migration target while it backfills, and the previous model's
    collection while it is kept for rollback after a cutover: a write must land in whichever ends up
    live, so it goes to all of them, each embedded with its own model.
    """
    return (info.current, *(p for p in info.physicals if p.name != info.physical))
