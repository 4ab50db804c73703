"""The ``shards:`` section of params.yaml as a frozen, validated dataclass."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from etl.core.config import load_params, load_section

DEFAULT_WEIGHTS = {"general": 7.0, "domain": 2.0, "expert": 1.0}
DEFAULT_GROUPS = {
    "general": ("general", "general-*", "chitchat-*", "tech-docs"),
    "domain": ("medical", "medical-consultation"),
    "expert": ("expert", "science", "legal", "medical-genetics"),
}


@dataclass(frozen=True, kw_only=True)
class ShardsConfig:
    """Tokenising, mixing and writing shards."""

    tokenizer: str = ""
    """Hugging Face fast tokenizer: a local directory or a hub id (``--tokenizer`` overrides)."""
    weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_WEIGHTS)))
    """Mix weights per group (any positive numbers; normalised). Default 7:2:1 general:domain:expert."""
    unit: Literal["tokens", "documents"] = "tokens"
    """What the weights count: tokens (default) or documents."""
    groups: Mapping[str, list[str]] = field(default_factory=lambda: MappingProxyType({k: list(v) for k, v in DEFAULT_GROUPS.items()}))
    """Record ``domain`` -> mix group: ``{group: [domain name or glob, ...]}``; exact names win over
    globs. ``--input GROUP=DIR`` assigns a whole input to a group instead."""
    default_group: str = ""
    """Group for records whose domain matches no rule; empty: such records are rejected
    (reason ``unmapped_domain``)."""
    on_exhausted: Literal["repeat", "stop"] = "repeat"
    """When a group runs out: repeat it (until every group was used once) or stop the plan."""
    seed: int = 0
    """Seed of the order of records within a group (sha256 of seed and record id)."""
    append_eos: bool = True
    """Append the EOS token to every document (the document separator when packing)."""
    pack_seq_len: int = 0
    """0: one sample per document; N > 0: pack documents into rows of N+1 tokens at write time
    (the reader packs on the fly otherwise)."""
    max_doc_tokens: int = 2048
    """Longest plan unit, in tokens (EOS included): longer documents are split at build time into
    near-equal chunks of at most this many tokens (ids ``<id>#c0``, ``<id>#c1``, ...), each a plan
    unit of its own, so the ratio holds within one chunk at every point of the stream. Set it to
    the trainer's ``seq_len`` (2048 = the train stage's default); 0 = never split."""
    shard_tokens: int = 50_000_000
    """Target tokens per shard: 50 M tokens = 100 MB of uint16 ids + ~1.5 KB tar overhead per
    document, i.e. 100-200 MB shards (WebDataset's advice: 100 MB-1 GB). Shards are cut at equal
    token counts (within one document), so every shard costs the same to read."""
    min_shards: int = 64
    """At least this many shards (small sets are cut finer; a reader needs dp_size x num_workers
    shards): 64 feeds e.g. 16 ranks x 4 loader workers. Never more shards than documents."""
    samples_per_shard: int = 0
    """0: size shards by ``shard_tokens``/``min_shards``; N > 0: exactly N plan slots per shard
    (the last one shorter) instead -- for tests and for reproducing old sets."""
    chat_template: str = "auto"
    """How fine-tuning records (dialogues, instructions) become text: ``auto`` renders them with
    the tokenizer's chat template when it has one (an imported model's own format; loss on the
    assistant messages only, shards/chat.py), else the project's default template;
    ``tokenizer`` requires the tokenizer's template; ``default`` always uses the project's."""
    min_tokens: int = 1
    """Documents with fewer tokens (before EOS) are rejected as ``too_few_tokens``."""
    valid_fraction: float = 0.0
    """Share of records held out as the validation set ``<output>/valid/`` (0 = none), chosen by
    a stable hash of each record's lineage root (dedup cluster, augment parent), so a rebuild
    keeps the split and no validation record shares a cluster with a training one (shards/split.py)."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 0:
            raise ValueError(f"shards.samples_per_shard: must be >= 0, got {self.samples_per_shard}")
        if self.chat_template not in ("auto", "tokenizer", "default"):
            raise ValueError(f"shards.chat_template: must be auto, tokenizer or default, got {self.chat_template!r}")
        if self.shard_tokens < 1 or self.min_shards < 1:
            raise ValueError(f"shards.shard_tokens and shards.min_shards: must be >= 1, got {self.shard_tokens}, {self.min_shards}")
        if self.max_doc_tokens < 0 or (self.append_eos and self.max_doc_tokens == 1):
            raise ValueError(f"shards.max_doc_tokens: must be 0 (no split) or >= 2, got {self.max_doc_tokens}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"shards.valid_fraction: must be in [0, 1), got {self.valid_fraction}")
        if self.pack_seq_len < 0:
            raise ValueError(f"shards.pack_seq_len: must be >= 0, got {self.pack_seq_len}")
        if not self.weights or any(v < 0 for v in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"shards.weights: need non-negative weights with a positive sum, got {dict(self.weights)}")
        if self.default_group and self.default_group not in self.weights:
            raise ValueError(f"shards.default_group: {self.default_group!r} is not a group in shards.weights {list(self.weights)}")


def load_shards_config(params_path: str | None = None) -> tuple[ShardsConfig, dict]:
    """The shards config and its raw section (for the params hash)."""
    params = load_params(params_path)
    return load_section(params, "shards"), params.get("shards") or {}
