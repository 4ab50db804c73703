"""Tokenizers for the shards stage: train a small byte-level BPE, load any HF fast tokenizer,
and fingerprint it so a shard set records exactly which vocabulary produced its ids.

* :func:`train_bpe_tokenizer` trains a byte-level BPE with the ``tokenizers`` library and saves
  it as a Hugging Face fast-tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json``
  + ``special_tokens_map.json``), loadable by ``transformers.AutoTokenizer``.
* :func:`load_tokenizer` loads a local directory or a hub id (``transformers`` resolves hub ids;
  without network only cached ids work).
* :func:`tokenizer_fingerprint` hashes the vocabulary, merges, normaliser, pre-tokeniser and
  special tokens (the parts that decide the ids), not file paths or timestamps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
#: Special tokens every jinglian-trained tokenizer has (ids 0.. in this order).
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, "<|user|>", "<|assistant|>", "<|system|>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, *, min_frequency: int = 2) -> Path:
    """Train a byte-level BPE on ``texts`` and save it as a HF fast tokenizer in ``out_dir``.

    ``vocab_size`` counts the 256 byte symbols and the special tokens; EOS is
    ``<|endoftext|>`` and PAD is ``<|pad|>``. Returns ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: must be at least {256 + len(SPECIAL_TOKENS)} for a byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
              "bos_token": None, "unk_token": None, "model_max_length": 1_000_000_000, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}, indent=2) + "\n", encoding="utf-8")
    logger.info("trained byte-level BPE: %d tokens -> %s", tok.get_vocab_size(), out)
    return out


def load_tokenizer(path_or_hub_id: str | os.PathLike):
    """A ``transformers`` fast tokenizer from a local directory or a hub id.

    A tokenizer without a pad token gets its EOS token as pad (ids stay unchanged).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path_or_hub_id), use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer {str(path_or_hub_id)!r}: a fast tokenizer is required (offset mappings build the loss masks)")
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {str(path_or_hub_id)!r}: has no eos token; documents are separated by EOS")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_backend_tokenizer(path_or_hub_id: str | os.PathLike):
    """The ``tokenizers.Tokenizer`` that does the encoding: read straight from
    ``<dir>/tokenizer.json`` for a local directory (no ``transformers``/torch import: ~3.5 s per
    Spark Python worker), else the backend of :func:`load_tokenizer`. Truncation and padding are
    switched off, as ``transformers`` does for an encode without them, so ids and offsets are the
    same either way."""
    path = Path(str(path_or_hub_id)) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(path))
    else:
        backend = load_tokenizer(path_or_hub_id).backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    return backend


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 (first 16 hex digits) of what decides the ids: model (vocab, merges), normaliser,
    pre-tokeniser, post-processor and added tokens of the backend tokenizer."""
    backend = getattr(tok, "backend_tokenizer", tok)
    spec = json.loads(backend.to_str())
    keep = {k: spec.get(k) for k in ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens")}
    blob = json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def token_dtype(vocab_size: int) -> str:
    """``uint16`` when every id fits in 16 bits, else ``uint32``."""
    return "uint16" if vocab_size <= 65536 else "uint32"
