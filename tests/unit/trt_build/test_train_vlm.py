"""vlm-shapes: training inputs equal what serving feeds the engine (the trainer preprocesses with
transformers, serving with services/media/qwen2vl.py), the trained prompts are the registry's vlm2vec
templates, nothing held out leaks into training, the trainer's faster kernels compute the engine's
vectors, and the committed model serves through the engine with its trained vectors."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from services.media import qwen2vl as q
from services.registry import load_presets
from tests.unit.trt_build.tiny_qwen_vl import engine_request, normalized
from trt_build.qwen_tokenizer import build_tokenizer, compact_tokenizer
from trt_build.synthetic import shapes
from trt_build.synthetic import train_vlm as tv
from trt_build.vlm_model import VlmEngine, check_request

ARGS = argparse.Namespace(hidden=32, layers=1, heads=2, vision_width=32, vision_depth=1, seed=0)
ASSET = Path(__file__).resolve().parents[3] / "trt_build" / "assets" / "vlm-shapes"


@pytest.fixture(scope="module")
def setup():
    texts = tv.corpus()
    tok = compact_tokenizer(texts)
    model = tv.build_model(tok, ARGS)
    cfg = q.config_from_hf(tv.preprocessor_config(), model.config.to_dict())
    return texts, tok, model, tv.Preprocessor(tok, model), cfg


def test_compact_vocabulary_splits_like_qwen2(setup) -> None:
    texts, tok, *_ = setup
    full = build_tokenizer()
    sample = random.Random(0).sample(texts, 300)
    assert [e.tokens for e in tok.encode_batch(sample)] == [e.tokens for e in full.encode_batch(sample)]
    assert tok.get_vocab_size() < 1000
    unseen = "unseen zebra 42 ∑"  # other text still tokenizes, into shorter pieces, and round-trips
    assert tok.decode(tok.encode(unseen).ids) == unseen


def test_prompts_are_the_registry_vlm2vec_templates() -> None:
    """A from-scratch model only understands the exact strings it was trained on."""
    preset = load_presets()["vlm2vec"]["templates"]

    def render(template: str) -> str:
        return template.replace("{image}", "<|image_pad|>").replace("{video}", "<|video_pad|>")

    trained = {
        "retrieval": (tv.T2I_QUERY, tv.IMAGE_TARGET),
        "image_to_text": (tv.I2T_QUERY, "{text}"),
        "vqa": (tv.QA_QUERY, "{text}"),
        "video_retrieval": (tv.T2V_QUERY, tv.VIDEO_TARGET),
    }
    for family, (query, document) in trained.items():
        assert (render(preset[family]["query"]), render(preset[family]["document"])) == (query, document)
    assert tv.CIR_QUERY.startswith("<|image_pad|>\n") and tv.CIR_QUERY.endswith("{text}\n")


@pytest.mark.parametrize("task", tv.TASKS)
def test_training_inputs_equal_serving_inputs(setup, task: str) -> None:
    _, tok, model, prep, cfg = setup
    assert cfg.image_token_id == model.config.image_token_id
    assert (cfg.min_pixels, cfg.max_pixels, cfg.video_max_pixels) == (
        tv.IMAGE_SIDE**2,
        tv.IMAGE_SIDE**2,
        tv.VIDEO_SIDE**2,
    )
    train, _ = shapes.split_combinations()
    queries, targets, _ = tv.Sampler(train, 2).pairs(task, 3, random.Random(1))
    for item in queries + targets:
        got = prep.request(item)
        check_request(got, prep.spec)
        visuals = [q.prepare_image(shapes.render(*r), cfg) for r in item.images]
        if item.clip is not None:
            visuals.append(q.prepare_video([np.asarray(f) for f in item.clip.images()], cfg))
        want = q.prepare_item(tok.encode(item.prompt).ids, visuals, cfg)
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        np.testing.assert_array_equal(got.position_ids, want.position_ids)
        np.testing.assert_array_equal(got.grid_thw, want.grid_thw)
        np.testing.assert_array_equal(got.pixel_values, normalized(want.pixel_values, cfg))


def test_fast_training_kernels_compute_the_same_vectors(setup) -> None:
    _, tok, model, prep, _ = setup
    fast = tv.fast_training_kernels(tv.build_model(tok, ARGS))
    assert fast.state_dict().keys() == model.state_dict().keys()  # saved as transformers loads it
    train, _ = shapes.split_combinations()
    items = [
        i
        for task in ("cir", "t2v")
        for side in tv.Sampler(train, 2).pairs(task, 4, random.Random(2))[:2]
        for i in side
    ]
    with torch.no_grad():
        torch.testing.assert_close(
            tv.encode(fast, prep, items), tv.encode(model, prep, items), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("task", tv.TASKS)
def test_training_never_sees_a_held_out_combination(task: str) -> None:
    train, held = shapes.split_combinations()
    sampler = tv.Sampler(train, 4)
    queries, targets, keys = sampler.pairs(task, 48, random.Random(3))
    assert len(queries) == 48 and len(targets) == len(keys) >= 48
    seen = {a for item in queries + targets for a, _ in item.images}
    seen |= {item.clip.attrs for item in targets if item.clip is not None}
    assert seen and not seen & set(held)


def test_groups_are_near_duplicates_and_edits_are_right() -> None:
    train, _ = shapes.split_combinations()
    sampler = tv.Sampler(train, 4)

    def differ(a: shapes.Attributes, b: shapes.Attributes) -> list[str]:
        return [f for f in tv.VALUES if getattr(a, f) != getattr(b, f)]

    combos = sampler.groups(48, random.Random(4))
    for k in range(0, 48, 4):
        assert all(len(differ(combos[k], c)) == 1 for c in combos[k + 1 : k + 4])
    for ref, text, target in sampler.cir(48, random.Random(5)):
        (kind,) = differ(ref, target)
        assert kind in tv.EDITS and text == tv.edit_text(kind, getattr(target, kind))


def test_near_duplicates_differ_only_in_the_named_attributes_and_renders_stay_in_range() -> None:
    """A second stage's groups: near duplicates that differ in shape or texture only (the held-out
    misses' attributes), drawn from `renders` renders per combination."""
    train, _ = shapes.split_combinations()
    sampler = tv.Sampler(train, 4, renders=64, near=("shape", "texture"))
    combos = sampler.groups(48, random.Random(6))
    changed = [
        f for k in range(0, 48, 4) for c in combos[k + 1 : k + 4] for f in tv.VALUES
        if getattr(combos[k], f) != getattr(c, f)
    ]  # fmt: skip
    assert len(changed) == 36 and set(changed) == {"shape", "texture"}
    _, targets, _ = sampler.pairs("t2i", 240, random.Random(7))
    seeds = {seed for item in targets for _, seed in item.images}
    assert max(seeds) < 64 and len(seeds) > 16  # the default stage draws from 16


def test_a_second_stage_starts_from_the_saved_model_and_refuses_another_vocabulary(
    setup, tmp_path: Path
) -> None:
    texts, tok, model, *_ = setup
    model.save_pretrained(tmp_path)
    tok.save(str(tmp_path / "tokenizer.json"))
    args = argparse.Namespace(**vars(ARGS), init=str(tmp_path))
    again = tv.initial_model(tok, args)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    compact_tokenizer(texts[:50]).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(SystemExit, match="vocabulary"):
        tv.initial_model(tok, args)


def test_info_nce_masks_duplicate_targets_and_uses_extra_negatives() -> None:
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # target 1 repeats target 0's key: query 0 must not be pushed away from it; query 1 is not helped
    masked = tv.info_nce(q, t[:2], ["a", "a"], 1.0)
    assert masked < tv.info_nce(q, t[:2], ["a", "b"], 1.0)
    # an extra negative (row past the queries) only adds to the denominator
    assert tv.info_nce(q, t, ["a", "b", "c"], 1.0) > tv.info_nce(q, t[:2], ["a", "b"], 1.0)
    assert tv.info_nce(q, t[:2], ["a", "b"], 1.0, symmetric=True) > 0


def test_held_out_queries_are_fixed_and_composed_references_are_held_out() -> None:
    h = tv.held_out(0)
    _, held = shapes.split_combinations()
    assert h.combos == held and len(h.renders) == len(h.clips) == len(h.cir_any) == len(held)
    assert 200 <= len(h.cir) < len(held)
    for (ref, _), text, i in h.cir:
        assert ref in set(held) and ref != held[i]
        (kind,) = [f for f in tv.VALUES if getattr(ref, f) != getattr(held[i], f)]
        assert text == tv.edit_text(kind, getattr(held[i], kind))
    assert tv.held_out(0) == h


@pytest.mark.skipif(not (ASSET / "model.safetensors").exists(), reason="vlm-shapes is not built")
def test_vlm_shapes_serves_through_the_gateway_path() -> None:
    """The committed model, fed by the gateway's numpy preprocessing and the Triton engine core: same
    vectors as the trainer's own forward, and held-out text -> image retrieval works."""
    from tokenizers import Tokenizer

    cfg = q.config_from_hf(
        json.loads((ASSET / "preprocessor_config.json").read_text()),
        json.loads((ASSET / "config.json").read_text()),
    )
    tok = Tokenizer.from_file(str(ASSET / "tokenizer.json"))
    engine = VlmEngine.load(str(ASSET), device="cpu", padding_side="left")
    h = tv.held_out(0)
    renders, combos = h.renders[:64], h.combos[:64]
    images = [
        q.prepare_item(tok.encode(tv.IMAGE_TARGET).ids, [q.prepare_image(shapes.render(*r), cfg)], cfg)
        for r in renders
    ]
    texts = [q.prepare_item(tok.encode(tv.T2I_QUERY.format(text=a.caption)).ids, [], cfg) for a in combos]
    served = [np.concatenate(engine.embed([engine_request(x)])) for x in (images, texts)]
    model, prep = tv.load(ASSET)
    with torch.no_grad():
        trained = tv.encode(model, prep, [tv.Item(tv.IMAGE_TARGET, images=(r,)) for r in renders]).numpy()
    assert float(np.min(np.sum(trained * served[0], axis=1))) >= 0.99999
    hits = (served[1] @ served[0].T).argmax(axis=1) == np.arange(len(combos))
    assert hits.mean() >= 0.5, hits.mean()  # chance 1/64; held-out R@1 over all 324 is in metrics.json
