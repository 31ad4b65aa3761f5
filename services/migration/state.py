"""Where a collection's reads and writes go, decided from ONE metadata snapshot.

A search must not read the migration state at one moment and the store target at another: across a
cutover it would embed the query for one model and search the other model's vectors (issue 20: a 768-d
MPNet query sent to the 384-d MiniLM collection). So every read follows a `ReadPlan` computed here from
one `CollectionInfo`, and each leg of the plan names the physical collection it searches together with
the model that embeds the query for it, taken from that physical's own record. Writes follow
`write_targets` from one snapshot as well, and re-check it after writing (services.indexing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.store import CollectionInfo, PhysicalInfo

ACTIVE = ("sampling", "backfilling", "cutover")  # a migration in progress: reads stay on the source
Path = Literal["raw", "compensated", "merged", "v1_fallback"]


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

    @property
    def compensated(self) -> bool:
        return any(leg.compensator for leg in self.legs)


def _raw(phys: PhysicalInfo) -> Leg:
    return Leg(phys, phys.model)


def read_plan(info: CollectionInfo, *, text: bool, merge: bool = False) -> ReadPlan:
    """The plan for one search of `info` as it was read.

    - no migration in progress: `raw` on the current physical;
    - migrating, text query, a fitted compensator that beats v1: `compensated` (v2 query mapped into the
      source's space); with `merge`, also raw v2 on the target, fused by rank (`merged`);
    - migrating otherwise (sampling, v1 queries win, media queries): `v1_fallback` on the source.
    """
    mig = info.migration or {}
    if mig.get("state") not in ACTIVE:
        return ReadPlan("raw", (_raw(info.current),), info.current.model)
    source = info.physical_info(mig["source"]["physical"])
    blob = (mig.get("compensator") or {}).get("blob")
    if text and blob and not mig.get("use_v1") and mig["state"] != "sampling":
        to_model = mig["to"]["model"]
        compensated = Leg(source, to_model, blob)
        if merge:
            target = info.physical_info(mig["target"])
            return ReadPlan("merged", (compensated, _raw(target)), to_model)
        return ReadPlan("compensated", (compensated,), to_model)
    return ReadPlan("v1_fallback", (_raw(source),), source.model)


def write_targets(info: CollectionInfo) -> tuple[PhysicalInfo, ...]:
    """Every physical collection the collection has, the live one first.

    Besides the live one that is the migration target while it backfills, and the previous model's
    collection while it is kept for rollback after a cutover: a write must land in whichever ends up
    live, so it goes to all of them, each embedded with its own model.
    """
    return (info.current, *(p for p in info.physicals if p.name != info.physical))
