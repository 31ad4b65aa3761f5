"""Real text available offline that no one here wrote: the docstrings of Python's standard library.

Deterministic: modules are walked in sorted order and only pure-Python stdlib sources are read (no
imports of the modules themselves, so nothing runs and nothing differs between machines of one Python).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SKIP = ("test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "ensurepip", "pydoc_data")


@dataclass(frozen=True)
class Doc:
    id: str  # module:qualified.name
    title: str  # first sentence of the docstring
    body: str  # the whole docstring, whitespace-normalized


def _first_sentence(text: str) -> str:
    para = text.strip().split("\n\n", 1)[0]
    para = " ".join(para.split())
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    return (m.group(1) if m else para).strip()


def stdlib_docs(min_body_words: int = 12) -> list[Doc]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[Doc] = []
    seen: set[str] = set()
    ids: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP or (part.startswith("_") and part != "__init__.py") for part in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.Module):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            body = " ".join(doc.split())
            title = _first_sentence(doc)
            if len(body.split()) < min_body_words or len(title.split()) < 3 or body in seen:
                continue
            seen.add(body)
            name = getattr(node, "name", "")
            base = f"{module}:{name}" if name else module
            doc_id, n = base, 1
            while doc_id in ids:  # same method name in several classes of one module
                n += 1
                doc_id = f"{base}#{n}"
            ids.add(doc_id)
            out.append(Doc(doc_id, title, body))
    return out


Task = Literal["summary-rest", "firstline-full"]
_RULE = re.compile(r"\s*[-=~^*]{3,}\s*")


def _squash(text: str) -> str:
    return " ".join(line for line in text.split("\n") if not _RULE.fullmatch(line)).strip()


def docstring_pairs_of(tree: ast.AST, task: Task) -> list[tuple[str, str]]:
    """(query, document) pairs cut from every docstring of `tree` with a summary paragraph: `summary-rest`
    keeps the summary out of its document (the hard task), `firstline-full` keeps the whole docstring."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if not doc or "\n\n" not in doc.strip():
            continue
        head, rest = doc.strip().split("\n\n", 1)
        body = doc.strip() if task == "firstline-full" else rest
        query, document = " ".join(head.split()), " ".join(_squash(body).split())[:1200]
        if 3 <= len(query.split()) <= 40 and len(document.split()) >= 8:
            out.append((query, document))
    return out


def sentences(n: int) -> list[str]:
    """`n` first sentences (the length profile of the shared CPU serving reference)."""
    return [d.title for d in stdlib_docs()[:n]]
