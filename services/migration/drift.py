"""Drift compensators: map v2 (new-model) query vectors into v1's (old) space while a backfill runs.

One interface for every kind, so the migration lifecycle stores, loads and applies any of them alike:
`fit(new, old)` on paired embeddings of the same texts, `apply(q_new)` on a batch (returns L2-normalized
vectors in the old space), `save()`/`load()` to a small versioned npz (arrays and a JSON header only, never
pickled code) and `size` in bytes. Kinds (sources in shared/reference/compatibility.md):

* `none`       identity; only when both models have the same dimension.
* `mean`       QDC: one global drift vector, mean of normalize(new) − normalize(old), subtracted.
* `kernel`     SDC-style local drift: Gaussian weights over the k nearest fitted pairs (in the new space)
               of δ_i = base(new_i) − old_i, blended with the global mean so that a query far from every pair
               falls back to it; `base` is the identity for equal dimensions, else a Procrustes map.
* `procrustes` centred orthogonal map (thin SVD, i.e. zero-padding when dimensions differ), optional scale.
* `linear`     centred ridge regression, optionally reduced-rank; the ridge strength is tuned on held-out.
* `mlp`        a Procrustes (or ridge) base plus a small residual ReLU MLP trained in numpy (no torch in the
               core), with a retrieval (InfoNCE) or MSE loss.

Hyper-parameters (σ, ridge λ, MLP epochs) are chosen by ranking on an internal held-out split of the pairs,
then refitted on all of them. `fit_auto` picks a kind by held-out retrieval (labelled MRR@10 when it has
labels, e.g. pseudo-queries and their documents; agreement with the re-index top-10 otherwise), never on
the pairs it was fitted on, reports each candidate's update gain (BCT, Shen et al. 2020) and decides the
never-worse-than-v1 rule.

One module on purpose (over the 450-line guide): the kinds share the interface, the fitting helpers and
the held-out selection, and are read together when choosing one.
"""

from __future__ import annotations

import io
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

FORMAT = "embedfleet-drift"
FORMAT_VERSION = 1
KINDS = ("none", "mean", "kernel", "procrustes", "linear", "mlp")
_EPS = 1e-12


def l2n(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def _split(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, tune) index split used for hyper-parameter choice inside `fit`."""
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(n * (1 - frac)))
    return order[:cut], order[cut:]


def _tune_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Pair-identification MRR of mapped rows among the tuning targets, plus mean cosine as a tie-break.

    Ranking, not cosine alone, is what search needs: an over-shrunk ridge map has a high mean cosine (every
    output near the mean) yet tells queries apart badly (Maiorca et al. 2023, compatibility.md §6).
    """
    pred, target = l2n(pred), l2n(target)
    sims = pred @ target.T
    own = np.diag(sims)
    rank = (sims > own[:, None]).sum(axis=1) + 1
    return float(np.mean(1.0 / rank) + 1e-3 * np.mean(own))


class Compensator(ABC):
    """Base class: a fitted map from the new model's space into the old one's."""

    kind: ClassVar[str]
    needs_equal_dims: ClassVar[bool] = False
    min_tune_pairs: ClassVar[int] = 40

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = {**self.defaults(), **params}
        self.arrays: dict[str, np.ndarray] = {}
        self.dim_new = 0
        self.dim_old = 0
        self._size: int | None = None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"seed": 0}

    # --- the interface ---------------------------------------------------------------------------
    def fit(self, new: np.ndarray, old: np.ndarray, **params: Any) -> Compensator:
        """Fit on paired embeddings of the same texts (rows aligned); returns self."""
        self.params.update(params)
        new, old = l2n(new), l2n(old)
        if new.shape[0] != old.shape[0] or new.shape[0] == 0:
            raise ValueError(
                f"need aligned, non-empty pairs; got {new.shape[0]} new and {old.shape[0]} old rows"
            )
        if self.needs_equal_dims and new.shape[1] != old.shape[1]:
            raise ValueError(
                f"compensator {self.kind!r} needs equal dimensions, got {new.shape[1]} → {old.shape[1]}"
            )
        self.dim_new, self.dim_old = new.shape[1], old.shape[1]
        self._fit(new, old)
        self.arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.arrays.items()}
        self._restore()
        return self

    def apply(self, q_new: np.ndarray) -> np.ndarray:
        """Map a batch of new-model vectors into the old space, L2-normalized (one row per query)."""
        q = l2n(q_new)
        if q.shape[1] != self.dim_new:
            raise ValueError(f"compensator expects {self.dim_new}-d queries, got {q.shape[1]}-d")
        return l2n(self._apply(q))

    def save(self) -> bytes:
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params,
            "dim_new": self.dim_new,
            "dim_old": self.dim_old,
        }
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            __header__=np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
            **{k: v.astype(np.float32) for k, v in self.arrays.items()},
        )
        return buf.getvalue()

    @property
    def size(self) -> int:
        """Bytes of the saved form (what the migration record stores)."""
        if self._size is None:
            self._size = len(self.save())
        return self._size

    # --- per kind ---------------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, new: np.ndarray, old: np.ndarray) -> None: ...

    def _restore(self) -> None:
        """Rebuild derived state from `arrays` (after fit and after load), so both apply identically."""
        self._size = None

    @abstractmethod
    def _apply(self, q: np.ndarray) -> np.ndarray: ...


class Identity(Compensator):
    kind = "none"
    needs_equal_dims = True

    def _fit(self, new: np.ndarray, old: np.ndarray) -> None:
        pass

    def _apply(self, q: np.ndarray) -> np.ndarray:
        return q


class MeanDrift(Compensator):
    """QDC (Goswami et al. 2025): a single translation; right for small, uniform drift."""

    kind = "mean"
    needs_equal_dims = True

    def _fit(self, new: np.ndarray, old: np.ndarray) -> None:
        self.arrays["delta"] = (new - old).mean(axis=0)

    def _apply(self, q: np.ndarray) -> np.ndarray:
        return q - self.arrays["delta"]


class Procrustes(Compensator):
    """Centred orthogonal map q̂ = s·(q − μ_new)·R + μ_old; thin SVD handles unequal dimensions."""

    kind = "procrustes"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"seed": 0, "scale": True}

    def _fit(self, new: np.ndarray, old: np.ndarray) -> None:
        mu_n, mu_o = new.mean(axis=0), old.mean(axis=0)
        xn, xo = new - mu_n, old - mu_o
        u, s, vt = np.linalg.svd(xn.T @ xo, full_matrices=False)
        scale = float(s.sum() / max(float((xn**2).sum()), _EPS)) if self.params["scale"] else 1.0
        self.arrays.update(mu_new=mu_n, mu_old=mu_o, rot=(u @ vt) * scale)

    def _apply(self, q: np.ndarray) -> np.ndarray:
        a = self.arrays
        return (q - a["mu_new"]) @ a["rot"] + a["mu_old"]


class Linear(Compensator):
    """Centred ridge regression (optionally reduced-rank); λ is tuned by ranking on held-out pairs."""

    kind = "linear"
    lambdas: ClassVar[tuple[float, ...]] = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"seed": 0, "lam": None, "rank": None}

    @staticmethod
    def _ridge(new: np.ndarray, old: np.ndarray, lams: Sequence[float]) -> list[dict[str, np.ndarray]]:
        """One SVD, every λ (relative to the largest squared singular value)."""
        mu_n, mu_o = new.mean(axis=0), old.mean(axis=0)
        u, s, vt = np.linalg.svd(new - mu_n, full_matrices=False)
        uty = u.T @ (old - mu_o)
        out = []
        for lam in lams:
            shrink = s / (s**2 + lam * s[0] ** 2)
            out.append({"mu_new": mu_n, "mu_old": mu_o, "w": vt.T @ (shrink[:, None] * uty)})
        return out

    def _reduce(self, arrays: dict[str, np.ndarray], new: np.ndarray) -> dict[str, np.ndarray]:
        rank = self.params["rank"]
        if not rank or rank >= min(arrays["w"].shape):
            return arrays
        fitted = (new - arrays["mu_new"]) @ arrays["w"]
        _, _, vt = np.linalg.svd(fitted, full_matrices=False)
        proj = vt[:rank].T @ vt[:rank]
        return {**arrays, "w": arrays["w"] @ proj}

    def _fit(self, new: np.ndarray, old: np.ndarray) -> None:
        lam = self.params["lam"]
        if lam is None:
            lam = self.lambdas[2]
            if len(new) >= self.min_tune_pairs:
                fit_i, tune_i = _split(len(new), 0.2, self.params["seed"])
                cands = [
                    self._reduce(a, new[fit_i]) for a in self._ridge(new[fit_i], old[fit_i], self.lambdas)
                ]
                scores = [_tune_score(self._map(a, new[tune_i]), old[tune_i]) for a in cands]
                lam = self.lambdas[int(np.argmax(scores))]
            self.params["lam"] = float(lam)
        self.arrays.update(self._reduce(self._ridge(new, old, [lam])[0], new))

    @staticmethod
    def _map(a: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
        return (q - a["mu_new"]) @ a["w"] + a["mu_old"]

    def _apply(self, q: np.ndarray) -> np.ndarray:
        return self._map(self.arrays, q)


class Kernel(Compensator):
    """SDC-style local drift (Yu et al. 2020), adapted new → old as in compatibility.md §2.

    q̂ = base(q) − Δ(q), Δ(q) = (Σ_i w_i δ_i + w₀ δ̄) / (Σ_i w_i + w₀) over the k nearest anchors,
    w_i = n_i · exp(−‖q − a_i‖² / 2σ²). The prior weight w₀ on the global mean δ̄ is the fallback: far
    from every fitted pair Σw → 0 and Δ → δ̄ (QDC). Anchors are the pairs themselves, or spherical k-means
    centroids (n_i members) when there are more than `max_anchors`, which bounds the cost per query.
    """

    kind = "kernel"
    sigmas: ClassVar[tuple[float, ...]] = (0.1, 0.15, 0.2, 0.3, 0.45, 0.7)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"seed": 0, "sigma": None, "k": 32, "prior": 1e-3, "max_anchors": 256}

    def _fit(self, new: np.ndarray, old: np.ndarray) -> None:
        base: Compensator = Identity() if self.dim_new == self.dim_old else Procrustes(scale=False)
        base.fit(new, old)
        self._base = base
        if self.params["sigma"] is None:
            sigma = 0.3
            if len(new) >= self.min_tune_pairs:
                fit_i, tune_i = _split(len(new), 0.2, self.params["seed"])
                self._set_anchors(new[fit_i], old[fit_i])
                scores = []
                for s in self.sigmas:
                    self.params["sigma"] = s
                    scores.append(_tune_score(self._apply(new[tune_i]), old[tune_i]))
                sigma = self.sigmas[int(np.argmax(scores))]
            self.params["sigma"] = float(sigma)
        self._set_anchors(new, old)

    def _set_anchors(self, new: np.ndarray, old: np.ndarray) -> None:
        delta = self._base._apply(new) - old
        anchors, counts, deltas = new, np.ones(len(new), np.float32), delta
        if len(new) > self.params["max_anchors"]:
            anchors, counts, deltas = _kmeans(new, delta, self.params["max_anchors"], self.params["seed"])
        self.arrays.update(
            {f"base_{k}": v for k, v in self._base.arrays.items()},
            anchors=anchors,
            counts=counts,
            deltas=deltas,
            mean_delta=delta.mean(axis=0),
        )

    def _apply(self, q: np.ndarray) -> np.ndarray:
        a = self.arrays
        base = self._base._apply(q)
        sims = q @ a["anchors"].T
        d2 = (q**2).sum(1, keepdims=True) - 2 * sims + (a["anchors"] ** 2).sum(1)[None, :]
        k = min(int(self.params["k"]), sims.shape[1])
        if k < sims.shape[1]:
            kth = np.partition(sims, -k, axis=1)[:, -k][:, None]
            d2 = np.where(sims >= kth, d2, np.inf)
        w = a["counts"][None, :] * np.exp(-np.maximum(d2, 0) / (2 * float(self.params["sigma"]) ** 2))
        prior = float(self.params["prior"])
        drift = (w @ a["deltas"] + prior * a["mean_delta"]) / (w.sum(1, keepdims=True) + prior)
        return base - drift

    def _restore(self) -> None:
        super()._restore()
        base: Compensator = Identity() if self.dim_new == self.dim_old else Procrustes(scale=False)
        base.dim_new, base.dim_old = self.dim_new, self.dim_old
        base.arrays = {k.removeprefix("base_"): v for k, v in self.arrays.items() if k.startswith("base_")}
        self._base = base


class MLP(Compensator):
    """A base map plus a residual ReLU MLP (Drift-Adapter's strongest variant), Adam in numpy.

    The base is the Procrustes map (or ridge, `base="linear"`); the output layer starts at zero, so
    training starts from the base and early stopping on the tuning split (epochs = 0 allowed) keeps it
    from ending below it. `loss="infonce"` trains the mapped query to pick its own old vector among the
    batch's (the retrieval objective); `loss="mse"` regresses the residual as Drift-Adapter does.
    """

    kind = "mlp"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "seed": 0,
            "hidden": 256,
            "epochs": None,
            "max_epochs": 30,
            "lr": 1e-3,
            "batch": 256,
            "weight_decay": 1e-4,
            "base": "procrustes",
            "loss": "infonce",
            "temperature": 0.05,
        }

    def _fit(self, new: np.ndarray, old: np.ndarray) -> None:
        epochs = self.params["epochs"]
        if epochs is None:
            epochs = self.params["max_epochs"] // 2
            if len(new) >= self.min_tune_pairs:
                fit_i, tune_i = _split(len(new), 0.2, self.params["seed"])
                tune = (new[tune_i], old[tune_i])
                curve = self._train(new[fit_i], old[fit_i], self.params["max_epochs"], tune)
                epochs = int(np.argmax(curve))
            self.params["epochs"] = epochs
        self._train(new, old, epochs, None)

    def _base_map(self, new: np.ndarray, old: np.ndarray) -> dict[str, np.ndarray]:
        """Base as (mu_new, w, mu_old) so one affine formula applies either kind."""
        if self.params["base"] == "linear":
            return dict(Linear(seed=self.params["seed"]).fit(new, old).arrays)
        a = Procrustes().fit(new, old).arrays
        return {"mu_new": a["mu_new"], "w": a["rot"], "mu_old": a["mu_old"]}

    def _output_grad(self, out: np.ndarray, old: np.ndarray) -> np.ndarray:
        """d loss / d output for one batch (`out` is the unnormalized mapped batch)."""
        if self.params["loss"] == "mse":
            return (out - old) * (2.0 / len(out))
        norm = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), _EPS)
        unit = out / norm
        tau = float(self.params["temperature"])
        logits = unit @ old.T / tau
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        prob[np.arange(len(out)), np.arange(len(out))] -= 1.0
        g_unit = (prob / len(out)) @ old / tau
        return (g_unit - unit * np.sum(unit * g_unit, axis=1, keepdims=True)) / norm

    def _train(
        self, new: np.ndarray, old: np.ndarray, epochs: int, tune: tuple[np.ndarray, np.ndarray] | None
    ) -> list[float]:
        p = self.params
        base = self._base_map(new, old)
        rng = np.random.default_rng(p["seed"])
        d_in, d_out, h = new.shape[1], old.shape[1], int(p["hidden"])
        params = {
            "w1": (rng.standard_normal((d_in, h)) * np.sqrt(2.0 / d_in)).astype(np.float32),
            "b1": np.zeros(h, np.float32),
            "w2": np.zeros((h, d_out), np.float32),
            "b2": np.zeros(d_out, np.float32),
        }
        self.arrays = {**{f"base_{k}": v for k, v in base.items()}, **params}
        base_out = Linear._map(base, new)
        adam = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
        curve = [_tune_score(self._apply(tune[0]), tune[1])] if tune else []
        step = 0
        for _ in range(epochs):
            for idx in np.array_split(rng.permutation(len(new)), max(1, len(new) // int(p["batch"]))):
                x = new[idx]
                pre = x @ params["w1"] + params["b1"]
                hid = np.maximum(pre, 0)
                err = self._output_grad(base_out[idx] + hid @ params["w2"] + params["b2"], old[idx])
                g_hid = (err @ params["w2"].T) * (pre > 0)
                grads = {"w2": hid.T @ err, "b2": err.sum(0), "w1": x.T @ g_hid, "b1": g_hid.sum(0)}
                step += 1
                for k, g in grads.items():
                    m, v = adam[k]
                    m *= 0.9
                    m += 0.1 * g
                    v *= 0.999
                    v += 0.001 * g * g
                    upd = (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
                    params[k] -= (p["lr"] * (upd + p["weight_decay"] * params[k])).astype(np.float32)
            if tune:
                curve.append(_tune_score(self._apply(tune[0]), tune[1]))
        return curve

    def _apply(self, q: np.ndarray) -> np.ndarray:
        a = self.arrays
        base = (q - a["base_mu_new"]) @ a["base_w"] + a["base_mu_old"]
        return base + np.maximum(q @ a["w1"] + a["b1"], 0) @ a["w2"] + a["b2"]


REGISTRY: dict[str, type[Compensator]] = {
    c.kind: c for c in (Identity, MeanDrift, Kernel, Procrustes, Linear, MLP)
}


def make(kind: str, **params: Any) -> Compensator:
    try:
        return REGISTRY[kind](**params)
    except KeyError:
        raise ValueError(f"unknown compensator {kind!r} (known: {', '.join(KINDS)})") from None


def load(data: bytes) -> Compensator:
    """Inverse of `Compensator.save`; refuses unknown formats and newer versions instead of guessing."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes().decode())
        arrays = {k: npz[k] for k in npz.files if k != "__header__"}
    if header.get("format") != FORMAT or int(header.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"not a drift compensator this version can read: {header.get('format')} v{header.get('version')}"
        )
    comp = make(header["kind"], **header["params"])
    comp.dim_new, comp.dim_old = int(header["dim_new"]), int(header["dim_old"])
    comp.arrays = arrays
    comp._restore()
    return comp


def _kmeans(
    x: np.ndarray, delta: np.ndarray, k: int, seed: int, iters: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means on the new-space vectors; returns (centroids, member counts, mean δ per cluster)."""
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(x @ cent.T, axis=1)
        counts = np.bincount(assign, minlength=k).astype(np.float32)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, x)
        empty = counts == 0
        cent = np.where(empty[:, None], cent, l2n(sums))
    assign = np.argmax(x @ cent.T, axis=1)
    counts = np.bincount(assign, minlength=k).astype(np.float32)
    dsum = np.zeros((k, delta.shape[1]), np.float32)
    np.add.at(dsum, assign, delta)
    keep = counts > 0
    return cent[keep], counts[keep], dsum[keep] / counts[keep][:, None]


# --- choosing a compensator ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Embeddings of the same texts by both models (rows aligned)."""

    new: np.ndarray
    old: np.ndarray

    def __post_init__(self) -> None:
        if len(self.new) != len(self.old):
            raise ValueError("pairs must be row-aligned")

    def __len__(self) -> int:
        return len(self.new)


def topk(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Indices of each query's k best corpus rows by dot product, best first."""
    sims = queries @ corpus.T
    k = min(k, corpus.shape[0])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def measure_latency_us(comp: Compensator, queries: np.ndarray, batch: int = 64, repeats: int = 3) -> float:
    """Added time per query, batched as the gateway batches (best of `repeats`)."""
    q = queries[:batch] if len(queries) >= batch else np.resize(queries, (batch, queries.shape[1]))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        comp.apply(q)
        best = min(best, time.perf_counter() - t0)
    return best / len(q) * 1e6


@dataclass
class Candidate:
    kind: str
    score: float  # held-out agreement (what `auto` maximizes)
    gain: float  # update gain on that score
    fit_s: float
    apply_us: float
    size: int
    params: dict[str, Any]
    quality: float | None = None  # held-out labelled MRR@k, when labels were given


@dataclass
class AutoResult:
    best: Compensator
    candidates: list[Candidate]
    raw_score: float  # agreement of unmapped v2 queries on the v1 index (0 when dimensions differ)
    v1_quality: float | None = None  # labelled MRR@k of v1 queries on the v1 index: not upgrading
    reindex_quality: float | None = None  # labelled MRR@k of v2 queries on a v2 index
    use_v1: bool = False  # the never-worse rule's verdict (needs labels)
    notes: list[str] = field(default_factory=list)
    fitted: dict[str, Compensator] = field(default_factory=dict, repr=False)  # every candidate, by kind

    def report(self) -> dict[str, Any]:
        return {
            "best": self.best.kind,
            "raw_score": self.raw_score,
            "v1_quality": self.v1_quality,
            "reindex_quality": self.reindex_quality,
            "use_v1": self.use_v1,
            "candidates": [c.__dict__ for c in self.candidates],
            "notes": self.notes,
        }


def fit_auto(
    train: Pairs,
    heldout: Pairs,
    candidates: Sequence[str] = ("mean", "kernel", "procrustes", "linear", "mlp"),
    *,
    corpus: Pairs | None = None,
    relevant: np.ndarray | None = None,
    k: int = 10,
    margin_se: float = 1.0,
) -> AutoResult:
    """Fit every candidate on `train`, score its `apply(heldout.new)` and return the best.

    Choice, by retrieval agreement: the overlap@k between a candidate's top-k among `corpus.old` and the
    top-k a full re-index gives (raw new queries among `corpus.new`), i.e. how closely the old index,
    queried through the compensator, answers like the upgraded one. Without a corpus, the held-out pairs
    are their own corpus (pair identification, MRR@k). Update gain G = (M(comp) − M(raw)) / (1 − M(raw)),
    M(raw) = 0 when dimensions differ.

    Never-worse rule, by quality: agreement is not quality (v1 may disagree with v2 and still answer
    better), so with `relevant` (the corpus row relevant to each held-out query, e.g. pseudo-queries and
    the documents they were cut from) v1 queries (`heldout.old` on `corpus.old`) keep answering unless
    the chosen compensator's labelled MRR@k beats theirs by `margin_se` standard errors of the per-query
    difference: a tie on a few hundred queries is no evidence that the compensated path is not worse.
    """
    dims_equal = train.new.shape[1] == train.old.shape[1]
    q_new = l2n(heldout.new)
    if corpus is not None:
        agree = _agreement_fn(l2n(corpus.old), topk(q_new, l2n(corpus.new), k), k)
    else:
        agree = _rr_fn(l2n(heldout.old), np.arange(len(heldout))[:, None], min(k, len(heldout)))
    quality = reindex_q = v1_rr = None
    if relevant is not None:
        if corpus is None:
            raise ValueError("labels (`relevant`) index a corpus: pass `corpus` too")
        target = np.asarray(relevant).reshape(-1, 1)
        quality = _rr_fn(l2n(corpus.old), target, k)
        reindex_q = float(_rr_fn(l2n(corpus.new), target, k)(q_new).mean())
        v1_rr = quality(l2n(heldout.old))
    raw = float(agree(q_new).mean()) if dims_equal else 0.0
    results: list[tuple[Candidate, Compensator]] = []
    notes = []
    for kind in candidates:
        comp = make(kind)
        if comp.needs_equal_dims and not dims_equal:
            notes.append(f"{kind}: skipped, needs equal dimensions")
            continue
        t0 = time.perf_counter()
        comp.fit(train.new, train.old)
        fit_s = time.perf_counter() - t0
        mapped = comp.apply(q_new)
        m = float(agree(mapped).mean())
        gain = (m - raw) / (1.0 - raw) if raw < 1.0 else 0.0
        q = float(quality(mapped).mean()) if quality is not None else None
        cand = Candidate(
            kind, m, gain, fit_s, measure_latency_us(comp, q_new), comp.size, dict(comp.params), q
        )
        results.append((cand, comp))
    if not results:
        raise ValueError("no candidate compensator applies to these dimensions")
    _, best = max(results, key=lambda r: (r[0].score, -r[0].apply_us))
    use_v1 = False
    if quality is not None and v1_rr is not None:
        diff = quality(best.apply(q_new)) - v1_rr
        use_v1 = bool(diff.mean() <= margin_se * diff.std(ddof=1) / np.sqrt(max(len(diff), 1)))
    return AutoResult(
        best,
        [c for c, _ in results],
        raw,
        float(v1_rr.mean()) if v1_rr is not None else None,
        reindex_q,
        use_v1=use_v1,
        notes=notes,
        fitted={c.kind: comp for c, comp in results},
    )


def _agreement_fn(corpus_old: np.ndarray, target: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    def overlap(q: np.ndarray) -> np.ndarray:
        got = topk(q, corpus_old, k)
        return np.array([len(set(g) & set(t)) / k for g, t in zip(got, target, strict=True)])

    return overlap


def _rr_fn(corpus: np.ndarray, target: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """Per-query reciprocal rank@k of the target row (0 beyond k)."""

    def rr(q: np.ndarray) -> np.ndarray:
        hit = topk(q, corpus, k) == target
        return np.where(hit.any(axis=1), 1.0 / (np.argmax(hit, axis=1) + 1), 0.0)

    return rr
