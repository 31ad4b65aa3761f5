"""Instruction templates: pick the (task family, side) template of a model and render it verbatim.

Slots are `{text}`, `{image}` and `{video}` only; any other brace is literal text, so templates copied
byte for byte from a model card need no escaping. `{image}`/`{video}` render to the model's placeholder
tokens (vlm) or to nothing (dual-tower, where the image goes through its own tower).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.errors import InvalidInput
from services.registry import SLOT, ModelSpec, Side

SIDE_ALIASES = {
    "query": Side.query,
    "passage": Side.document,
    "document": Side.document,
    "doc": Side.document,
}


@dataclass(frozen=True)
class Template:
    task: str  # "retrieval.query", "instruction" for a caller override, ...
    template: str

    @property
    def slots(self) -> set[str]:
        return set(SLOT.findall(self.template))

    def render(self, text: str = "", image: str = "", video: str = "") -> str:
        values = {"text": text, "image": image, "video": video}
        return SLOT.sub(lambda m: values[m.group(1)], self.template)


def resolve(
    spec: ModelSpec, task: str | None, default_side: Side = Side.query, instruction: str | None = None
) -> Template:
    """`task` is a family (`retrieval`) or family.side (`retrieval.query`, `retrieval.passage`).

    A caller's `instruction` wins: with a `{text}` slot it is the whole template, otherwise a verbatim
    prefix (as TEI's `prompt`).
    """
    if instruction is not None:
        return Template("instruction", instruction if SLOT.search(instruction) else instruction + "{text}")
    family, side = task or "default", default_side
    if "." in family:
        family, _, side_name = family.rpartition(".")
        if side_name not in SIDE_ALIASES:
            raise InvalidInput(f"task side {side_name!r} is not one of {sorted(SIDE_ALIASES)}", field="task")
        side = SIDE_ALIASES[side_name]
    if family not in spec.templates:
        if task is None:
            return Template("default.query" if side is Side.query else "default.document", "{text}")
        known = sorted(f"{f}.{s}" for f in spec.templates for s in ("query", "passage"))
        raise InvalidInput(f"model {spec.name} has no task {task!r}; known: {', '.join(known)}", field="task")
    side_label = "query" if side is Side.query else "passage"
    return Template(f"{family}.{side_label}", spec.templates[family].for_side(side))
