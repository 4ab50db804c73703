"""Starting a run from a checkpoint (``--pretrained``): its model config and tokenizer.

A checkpoint carries its model config in its common state (``config.model``; an imported
Hugging Face model also ``hf.tokenizer``: the vocabulary size and EOS id of its tokenizer).
``--pretrained`` therefore needs no model recipe: :func:`use_pretrained_model` replaces the
recipe's model with the checkpoint's, keeping only the training-side fields of the recipe
(:data:`TRAINING_MODEL_FIELDS`), and :func:`check_shards_tokenizer` stops a run whose shards
were tokenised for another model. Reads ``common.pt`` only (no megatron import).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from etl.core.config import build_config, config_to_dict
from trainer.config import ModelConfig, TrainConfig

#: model fields a recipe or --set may still choose for a pretrained model
TRAINING_MODEL_FIELDS = ("seq_len", "hidden_dropout", "attention_dropout", "transformer_impl")


def checkpoint_path(source: str | os.PathLike) -> Path:
    """The iteration directory of ``source`` (a run directory with ``latest`` or an iter_* dir)."""
    root = Path(source)
    if (root / "common.pt").exists():
        return root
    marker = root / "latest"
    if not marker.exists():
        raise ValueError(f"{source}: no checkpoint there (no common.pt and no 'latest' file); "
                         "import a Hugging Face model with: python -m trainer.hf import <hf dir> <checkpoint dir>")
    return root / marker.read_text().strip()


def read_common(source: str | os.PathLike) -> dict[str, Any]:
    """The common (rank-0) state of checkpoint ``source``: step, config, layout, vocab_size, hf."""
    return torch.load(checkpoint_path(source) / "common.pt", map_location="cpu", weights_only=False)["common"]


def checkpoint_model(common: dict[str, Any]) -> ModelConfig | None:
    """The model config saved in ``common`` (vocab_size filled from the run's when unset)."""
    model = dict((common.get("config") or {}).get("model") or {})
    if not model:
        return None
    if model.get("vocab_size") is None and common.get("vocab_size"):
        model["vocab_size"] = int(common["vocab_size"])
    return build_config(ModelConfig, model, "model")


def use_pretrained_model(config: TrainConfig, pretrained: str, overrides: dict[str, Any]) -> TrainConfig:
    """``config`` with its model taken from checkpoint ``pretrained`` (training-side fields kept).

    A ``model.*`` override of an architecture field that disagrees with the checkpoint is a
    ValueError naming both values.
    """
    saved = checkpoint_model(read_common(pretrained))
    if saved is None:
        return config
    merged = config_to_dict(saved)
    for name in TRAINING_MODEL_FIELDS:
        merged[name] = getattr(config.model, name)
    for dotted, value in overrides.items():
        name = dotted.removeprefix("model.")
        if dotted.startswith("model.") and name not in TRAINING_MODEL_FIELDS and merged.get(name) != value:
            raise ValueError(f"train.{dotted}={value!r}: the model comes from pretrained checkpoint {pretrained} "
                             f"({name}={merged.get(name)!r}); only {list(TRAINING_MODEL_FIELDS)} may be set")
    return dataclasses.replace(config, model=build_config(ModelConfig, merged, "model"))


def shards_tokenizer(manifest: dict[str, Any]) -> dict[str, Any]:
    """Vocabulary size and EOS id the shards were tokenised with (manifest ``tokenizer``; the
    synthetic stream has none, so nothing is compared for it)."""
    tok = manifest.get("tokenizer") or {}
    return {k: tok.get(k) for k in ("vocab_size", "eos_id")}


def check_shards_tokenizer(manifest: dict[str, Any], common: dict[str, Any], shards: str, pretrained: str) -> None:
    """ValueError (one line, naming both) when the shards' tokenizer vocabulary size or EOS id
    differs from the pretrained model's tokenizer; fields either side lacks are not compared."""
    model_tok = (common.get("hf") or {}).get("tokenizer") or {}
    data_tok = shards_tokenizer(manifest)
    keys = [k for k in ("vocab_size", "eos_id") if model_tok.get(k) is not None and data_tok.get(k) is not None]
    if any(int(model_tok[k]) != int(data_tok[k]) for k in keys):
        have = " ".join(f"{k}={data_tok[k]}" for k in keys)
        want = " ".join(f"{k}={model_tok[k]}" for k in keys)
        source = (common.get("hf") or {}).get("source", pretrained)
        raise ValueError(f"shards {shards} were tokenised with {have} but pretrained {pretrained} "
                         f"expects {want} (tokenizer of {source}); rebuild the shards with that tokenizer")
