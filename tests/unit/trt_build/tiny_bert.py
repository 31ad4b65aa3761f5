"""A tiny random BERT saved as a Hugging Face folder: the torch-cuda engine's test model, shared by the
unit tests and the tritonserver integration test."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_bert(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    BertModel(cfg).eval().save_pretrained(path)
    return path
