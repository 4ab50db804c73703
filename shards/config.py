"""The ``shards:`` section of params.yaml as a frozen, validated dataclass."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

from etl.config import build_config, load_params

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
    samples_per_shard: int = 2000
    """Plan slots (documents) per shard; ~2000 docs x 1k tokens x 2 bytes = 4 MB shards."""
    min_tokens: int = 1
    """Documents with fewer tokens (before EOS) are rejected as ``too_few_tokens``."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"shards.samples_per_shard: must be >= 1, got {self.samples_per_shard}")
        if self.pack_seq_len < 0:
            raise ValueError(f"shards.pack_seq_len: must be >= 0, got {self.pack_seq_len}")
        if not self.weights or any(v < 0 for v in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"shards.weights: need non-negative weights with a positive sum, got {dict(self.weights)}")
        if self.default_group and self.default_group not in self.weights:
            raise ValueError(f"shards.default_group: {self.default_group!r} is not a group in shards.weights {list(self.weights)}")


def load_shards_config(params_path: str | None = None) -> tuple[ShardsConfig, dict]:
    """The shards config and its raw section (for the params hash)."""
    section = load_params(params_path).get("shards") or {}
    return build_config(ShardsConfig, section, "shards"), section
