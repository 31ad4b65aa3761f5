"""Drift compensators on synthetic drifts whose right answer is known (issue 9, acceptance)."""

from __future__ import annotations

import numpy as np
import pytest

from services.migration import drift
from services.migration.drift import Pairs, fit_auto, l2n, make


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    return l2n(np.random.default_rng(seed).standard_normal((n, d)))


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q.astype(np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2n(a) * l2n(b), axis=1)


def _recall1(queries: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.argmax(queries @ targets.T, axis=1) == np.arange(len(queries))))


def test_mean_recovers_a_pure_translation() -> None:
    old = _unit(400, 48, 0)
    shift = 0.08 * _unit(1, 48, 1)[0]
    new = l2n(old + shift)
    comp = make("mean").fit(new[:300], old[:300])
    mapped = comp.apply(new[300:])
    assert _cos(comp.arrays["delta"][None], shift[None])[0] > 0.99
    assert _cos(mapped, old[300:]).min() > 0.999
    assert _cos(mapped, old[300:]).mean() > _cos(new[300:], old[300:]).mean()


def test_procrustes_recovers_a_rotation_exactly() -> None:
    old = _unit(300, 32, 2)
    new = old @ _rotation(32, 3)
    comp = make("procrustes").fit(new[:200], old[:200])
    assert _cos(comp.apply(new[200:]), old[200:]).min() > 0.9999
    assert _recall1(new[200:], old[200:]) < 0.2  # the raw vectors really are incompatible


@pytest.mark.parametrize(("d_old", "d_new"), [(24, 40), (40, 24)])
def test_procrustes_zero_pads_a_dimension_change(d_old: int, d_new: int) -> None:
    base = _unit(300, min(d_old, d_new), 4)
    if d_new > d_old:  # the new model embeds the old space rotated inside a larger one
        old = base
        new = np.pad(base, ((0, 0), (0, d_new - d_old))) @ _rotation(d_new, 5)
    else:  # the new model is the old space's projection on fewer dimensions, rotated
        old = np.pad(base, ((0, 0), (0, d_old - d_new))) @ _rotation(d_old, 6)
        new = base @ _rotation(d_new, 7)
    comp = make("procrustes").fit(new[:200], old[:200])
    out = comp.apply(new[200:])
    assert out.shape == (100, d_old)
    assert _cos(out, old[200:]).min() > 0.999


def test_linear_learns_a_dimension_change() -> None:
    old = _unit(600, 24, 8)
    mix = np.random.default_rng(9).standard_normal((24, 40)).astype(np.float32)
    new = l2n(old @ mix)  # a non-orthogonal linear map into more dimensions
    comp = make("linear").fit(new[:500], old[:500])
    assert comp.apply(new[500:]).shape == (100, 24)
    assert _cos(comp.apply(new[500:]), old[500:]).mean() > 0.98
    assert _recall1(comp.apply(new[500:]), old[500:]) == 1.0


def _two_cluster_drift(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points near +e0 drift along +e1, points near −e0 along −e1: the global mean drift is ~0."""
    d = 16
    rng = np.random.default_rng(seed)
    centers = np.zeros((2, d), np.float32)
    centers[0, 0], centers[1, 0] = 1.0, -1.0
    side = rng.integers(0, 2, 600)
    old = l2n(centers[side] + 0.15 * rng.standard_normal((600, d)).astype(np.float32))
    shift = np.zeros((2, d), np.float32)
    shift[0, 1], shift[1, 1] = 0.3, -0.3
    new = l2n(old + shift[side])
    return new, old, side, centers


def test_kernel_follows_local_drift_that_mean_cannot() -> None:
    new, old, _, _ = _two_cluster_drift(10)
    kernel = make("kernel").fit(new[:500], old[:500])
    mean = make("mean").fit(new[:500], old[:500])
    k_cos = _cos(kernel.apply(new[500:]), old[500:]).mean()
    m_cos = _cos(mean.apply(new[500:]), old[500:]).mean()
    assert k_cos > 0.99
    assert k_cos > m_cos + 0.02


def test_kernel_falls_back_to_the_mean_far_from_every_pair() -> None:
    new, old, _, _ = _two_cluster_drift(11)
    kernel = make("kernel", sigma=0.1).fit(new, old)
    far = np.zeros((3, 16), np.float32)
    far[:, 5:8] = np.eye(3)  # orthogonal to both clusters
    expected = l2n(far - kernel.arrays["mean_delta"])
    np.testing.assert_allclose(kernel.apply(far), expected, atol=1e-5)
    near = l2n(new[:5])
    assert not np.allclose(kernel.apply(near), l2n(near - kernel.arrays["mean_delta"]), atol=1e-3)


def test_kernel_uses_procrustes_base_across_dimensions() -> None:
    old = _unit(300, 24, 12)
    new = np.pad(old, ((0, 0), (0, 8))) @ _rotation(32, 13)
    comp = make("kernel").fit(new[:200], old[:200])
    assert _cos(comp.apply(new[200:]), old[200:]).min() > 0.999


def test_identity_and_mean_refuse_a_dimension_change() -> None:
    new, old = _unit(50, 32, 14), _unit(50, 24, 15)
    for kind in ("none", "mean"):
        with pytest.raises(ValueError, match="equal dimensions"):
            make(kind).fit(new, old)


def test_mlp_corrects_a_nonlinear_drift_better_than_linear_maps() -> None:
    new = _unit(1500, 16, 16)
    mix = np.random.default_rng(27).standard_normal((16, 16)).astype(np.float32)
    old = l2n(np.maximum(new @ mix, 0) + 0.2 * new)  # a ReLU layer: no linear map undoes it
    train, test = slice(0, 1200), slice(1200, None)
    mlp = make("mlp", max_epochs=30).fit(new[train], old[train])
    assert mlp.params["epochs"] > 0  # early stopping kept some training
    got = _recall1(mlp.apply(new[test]), old[test])
    for kind in ("linear", "procrustes"):
        other = make(kind).fit(new[train], old[train])
        assert got > _recall1(other.apply(new[test]), old[test]) + 0.03


@pytest.mark.parametrize("kind", drift.KINDS)
def test_save_load_round_trip_is_exact(kind: str) -> None:
    old = _unit(700, 16, 17)  # more pairs than kernel's anchors: exercises the k-means path too
    new = l2n(old @ _rotation(16, 18) + 0.05)
    comp = make(kind, **({"max_anchors": 64} if kind == "kernel" else {})).fit(new[:600], old[:600])
    blob = comp.save()
    again = drift.load(blob)
    assert again.kind == kind and again.params == comp.params
    np.testing.assert_array_equal(again.apply(new[600:]), comp.apply(new[600:]))
    assert comp.size == len(blob) < 200_000


def test_load_rejects_foreign_or_newer_data() -> None:
    blob = make("mean").fit(_unit(20, 8, 19), _unit(20, 8, 20)).save()
    with pytest.raises(ValueError):
        drift.load(b"not an npz")
    import io
    import json

    buf = io.BytesIO()
    header = {"format": drift.FORMAT, "version": drift.FORMAT_VERSION + 1, "kind": "mean"}
    np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(ValueError, match="version"):
        drift.load(buf.getvalue())
    assert drift.load(blob).kind == "mean"


def test_auto_picks_a_rotation_solver_and_reports_gains() -> None:
    old = _unit(900, 32, 21)
    new = old @ _rotation(32, 22)
    train, held = Pairs(new[:600], old[:600]), Pairs(new[600:], old[600:])
    res = fit_auto(train, held, candidates=("mean", "kernel", "procrustes", "linear"))
    scores = {c.kind: c for c in res.candidates}
    assert res.best.kind in {"procrustes", "linear"}
    assert scores[res.best.kind].score > 0.99 and scores[res.best.kind].gain > 0.99
    assert scores["mean"].score < 0.5  # a translation cannot undo a rotation
    assert all(c.apply_us > 0 and c.size > 0 for c in res.candidates)
    assert not res.use_v1


def _labelled(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Documents, queries cut near them (600) and each query's relevant document; all in the new space."""
    rng = np.random.default_rng(seed)
    docs = _unit(300, 16, seed)
    relevant = rng.integers(0, 300, 600)
    queries = l2n(docs[relevant] + 0.35 * rng.standard_normal((600, 16)).astype(np.float32))
    return docs, queries, relevant, _rotation(16, seed + 1)


def test_auto_serves_the_compensator_only_when_it_beats_v1_clearly() -> None:
    docs, queries, relevant, rot = _labelled(30)
    noise = np.random.default_rng(34)

    def v1(x: np.ndarray) -> np.ndarray:  # v1 is v2 rotated, plus noise of its own: a worse model
        return l2n(x @ rot + 0.25 * noise.standard_normal(x.shape).astype(np.float32))

    old_q, old_d = v1(queries), v1(docs)
    train, held = Pairs(queries[:400], old_q[:400]), Pairs(queries[400:], old_q[400:])
    res = fit_auto(train, held, ("mean", "procrustes"), corpus=Pairs(docs, old_d), relevant=relevant[400:])
    assert res.best.kind == "procrustes"
    assert res.v1_quality is not None and res.candidates[1].quality > res.v1_quality
    assert not res.use_v1
    tie = fit_auto(  # an exact rotation: compensated == v1, and a tie keeps v1 answering
        Pairs(queries[:400], queries[:400] @ rot),
        Pairs(queries[400:], queries[400:] @ rot),
        ("procrustes",),
        corpus=Pairs(docs, docs @ rot),
        relevant=relevant[400:],
    )
    assert tie.v1_quality == pytest.approx(tie.reindex_quality, abs=1e-6)
    assert tie.candidates[0].quality == pytest.approx(tie.v1_quality, abs=0.02)
    assert tie.use_v1


def test_auto_keeps_v1_when_no_compensator_reaches_it() -> None:
    docs, queries, relevant, rot = _labelled(31)
    shuffled = np.random.default_rng(32).permutation(400)  # misaligned fitting pairs: nothing to learn
    train = Pairs(queries[:400], (queries[:400] @ rot)[shuffled])
    held = Pairs(queries[400:], queries[400:] @ rot)
    res = fit_auto(
        train, held, ("linear", "procrustes"), corpus=Pairs(docs, docs @ rot), relevant=relevant[400:]
    )
    assert res.v1_quality is not None and res.v1_quality > 0.5
    assert max(c.quality for c in res.candidates) < 0.5 * res.v1_quality
    assert res.use_v1


def test_auto_without_labels_scores_agreement_and_gives_no_verdict() -> None:
    docs, queries, _, rot = _labelled(33)
    train, held = Pairs(queries[:400], queries[:400] @ rot), Pairs(queries[400:], queries[400:] @ rot)
    res = fit_auto(train, held, ("procrustes",), corpus=Pairs(docs, docs @ rot))
    assert res.candidates[0].score > 0.98  # the re-index top-10, recovered
    assert res.v1_quality is None and not res.use_v1
