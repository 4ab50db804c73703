"""The ``augment:`` section of params.yaml as frozen, validated dataclasses.

Which documents are augmented, and how many variants each gets, is decided by *rate groups*:
``groups`` maps a group name to shell-style patterns over the document's ``domain`` field
(``medical``, ``medical-*``), and ``rates`` maps a group to an expected number of variants per
document for each method.  A rate of 1.5 gives one variant plus a second with probability 0.5
(drawn from the document's own rng).  Documents in no group are passed through untouched.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from etl.core.config import build_config
from etl.core.step import ON_ERROR_CHOICES

METHODS = ("back_translation", "masked_lm", "entity_swap")
#: Short codes used in variant ids: ``<parent>~bt0``, ``<parent>~mlm1``, ``<parent>~es0``.
METHOD_CODES = {"back_translation": "bt", "masked_lm": "mlm", "entity_swap": "es"}
#: What the fact guard compares between a variant and its original (augment/facts.py).
FACT_KINDS = ("number", "date", "unit", "entity", "negation")
#: Entity-swap modes: ``alias`` keeps the meaning; ``counterfactual`` also swaps in other entities of the same type.
SWAP_MODES = ("alias", "counterfactual")


def _check_fraction(where: str, value: float, low: float = 0.0, high: float = 1.0) -> None:
    if not low <= value <= high:
        raise ValueError(f"{where} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """Similarity bounds and kept facts for one method (see :mod:`augment.guard` and :mod:`augment.facts`)."""

    min_similarity: float = 0.2
    """Variants with character-bigram similarity below this are ``too_different`` (meaning drift)."""
    max_similarity: float = 0.98
    """Variants with similarity at or above this are ``too_similar`` (no real change); 1.0 rejects only identical text."""
    max_length_ratio: float = 2.0
    """Variants longer than ratio x parent, or shorter than parent / ratio (characters), are ``too_different``."""
    facts: tuple[str, ...] = FACT_KINDS
    """Fact kinds (of number, date, unit, entity, negation) the variant must keep from its parent,
    as multisets; a variant that loses, changes or adds one is ``changed_fact``. Empty: no fact check."""

    def __post_init__(self) -> None:
        unknown = [k for k in self.facts if k not in FACT_KINDS]
        if unknown:
            raise ValueError(f"facts: unknown fact kind(s) {unknown}; known: {list(FACT_KINDS)}")
        _check_fraction("min_similarity", self.min_similarity)
        _check_fraction("max_similarity", self.max_similarity)
        if self.min_similarity >= self.max_similarity:
            raise ValueError(f"min_similarity ({self.min_similarity}) must be below max_similarity ({self.max_similarity})")
        if self.max_length_ratio < 1.0:
            raise ValueError(f"max_length_ratio must be >= 1, got {self.max_length_ratio!r}")


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """One back-translation round trip: source -> pivot with ``forward``, pivot -> source with ``backward``."""

    forward: str
    """Hugging Face hub id or local directory of the source -> pivot seq2seq model."""
    backward: str
    """Hub id or local directory of the pivot -> source model."""
    forward_prefix: str = ""
    """Text put before every source sentence, e.g. ``>>cmn_Hans<< `` for multi-target Marian models (opus-mt-en-zh)."""
    backward_prefix: str = ""
    """Text put before every pivot sentence for the backward model."""


def _default_routes() -> dict[str, RouteConfig]:
    return {"zh": RouteConfig(forward="Helsinki-NLP/opus-mt-zh-en", backward="Helsinki-NLP/opus-mt-en-zh", backward_prefix=">>cmn_Hans<< "),
            "en": RouteConfig(forward="Helsinki-NLP/opus-mt-en-zh", backward="Helsinki-NLP/opus-mt-zh-en", forward_prefix=">>cmn_Hans<< ")}


@dataclass(frozen=True, kw_only=True)
class BackTranslationConfig:
    """Back-translation settings."""

    routes: dict[str, RouteConfig] = field(default_factory=_default_routes)
    """Document language -> round trip; documents in other languages are not back-translated."""
    batch_sentences: int = 32
    """Sentences per generate call (sorted by length first, so padding stays small)."""
    max_sentence_chars: int = 300
    """Longer sentences are cut at clause punctuation or spaces (Marian's limit is 512 tokens)."""
    max_input_tokens: int = 256
    """Tokens kept per sentence at the model input (truncation beyond)."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens per sentence (also capped at 1.5 x input + 10)."""
    num_beams: int = 4
    """Beam width for deterministic decoding (ignored when ``do_sample``)."""
    do_sample: bool = False
    """Sample instead of beam search; each sentence has its own seeded generator, so results do
    not depend on batch composition. Needed for more than one variant per document."""
    temperature: float = 0.9
    """Sampling temperature."""
    top_k: int = 50
    """Sample among the k most likely tokens (0: no limit)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""

    def __post_init__(self) -> None:
        for name in ("batch_sentences", "max_sentence_chars", "max_input_tokens", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k!r}")
        _check_fraction("top_p", self.top_p)


def _default_mlm_models() -> dict[str, str]:
    return {"zh": "bert-base-chinese", "en": "bert-base-uncased"}


@dataclass(frozen=True, kw_only=True)
class MaskedLMConfig:
    """Masked-LM substitution settings."""

    models: dict[str, str] = field(default_factory=_default_mlm_models)
    """Document language -> masked LM (hub id or local directory)."""
    word_fraction: float = 0.15
    """Fraction of eligible words replaced per variant (at least one); 0.15 is BERT's own masking rate."""
    top_k: int = 10
    """Replacements are drawn among the k best predictions that differ from the original word."""
    batch_sentences: int = 32
    """Most sentences per forward pass; sentences are sorted by length and cut into batches that
    minimise padding plus a per-call cost (``augment.mlm.plan_batches``)."""
    max_sentence_chars: int = 250
    """Longer sentences are cut at clause punctuation (keeps a sentence within 512 BERT tokens)."""
    max_input_tokens: int = 512
    """Tokens per sentence at the model input; words past this are not masked."""
    stop_words: tuple[str, ...] = ()
    """Extra stop-word files (one word per line) added to the built-in Chinese and English lists."""
    original_top_k: int = 10
    """A word is replaced only where the model ranks the original word (each of its tokens)
    among its ``original_top_k`` best predictions: the replacement is then one the model sees
    as interchangeable with the original in that context. 0: no such check."""

    def __post_init__(self) -> None:
        _check_fraction("word_fraction", self.word_fraction)
        for name in ("top_k", "batch_sentences", "max_sentence_chars", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.original_top_k < 0:
            raise ValueError(f"original_top_k must be >= 0, got {self.original_top_k!r}")


def _default_pos_types() -> dict[str, str]:
    return {"nr": "person", "ns": "place", "nt": "organization"}


@dataclass(frozen=True, kw_only=True)
class EntitySwapConfig:
    """Entity swap settings."""

    mode: str = "alias"
    """``alias``: knowledge-graph entities (and user-dictionary words) are replaced by their own
    aliases only (``CPU`` -> ``中央处理器``): the variant says the same thing. ``counterfactual``:
    also by other entities of the same type (``北京`` -> ``上海``), and words jieba tags with a
    ``pos_types`` tag are swapped too: false statements by design (robustness to entity names,
    not knowledge injection); recorded as ``mode: counterfactual`` in each variant's lineage."""
    knowledge_graph: tuple[str, ...] = ()
    """CSV or JSON(L) files of ``entity, type, aliases`` (aliases separated by ``|``)."""
    user_dicts: tuple[str, ...] = ()
    """jieba user dictionaries (``word [freq] [pos]``); words tagged with a ``pos_types`` tag
    become entities of that type (no aliases: swapped in counterfactual mode only)."""
    pos_types: dict[str, str] = field(default_factory=_default_pos_types)
    """jieba part-of-speech tag -> entity type (person, place, organisation by default). Tagged
    words outside the graph are never swapped in alias mode; masked-LM never masks them."""
    entity_fraction: float = 0.5
    """Fraction of the distinct swappable entities in a document swapped per variant (at least one)."""
    alias_prob: float = 0.5
    """Counterfactual mode only: chance of replacing a knowledge-graph entity by one of its own
    aliases rather than by another entity of the same type."""

    def __post_init__(self) -> None:
        if self.mode not in SWAP_MODES:
            raise ValueError(f"mode must be one of {list(SWAP_MODES)}, got {self.mode!r}")
        _check_fraction("entity_fraction", self.entity_fraction)
        _check_fraction("alias_prob", self.alias_prob)


def _default_guards() -> dict[str, GuardConfig]:
    return {"back_translation": GuardConfig(min_similarity=0.15, max_similarity=0.95),
            "masked_lm": GuardConfig(min_similarity=0.4, max_similarity=0.99),
            "entity_swap": GuardConfig(min_similarity=0.4, max_similarity=1.0)}


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """The ``augment:`` section of params.yaml."""

    seed: int = 1234
    """Base seed; each document's rng comes from (seed, document id, method, variant index)."""
    on_error: str = "skip"
    """``skip``: a failing document keeps its original and gets an ``error_<Type>`` rejected variant; ``raise``: stop."""
    methods: tuple[str, ...] = METHODS
    """Methods to run, in order."""
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Rate group -> shell patterns over the ``domain`` field; the first matching group wins."""
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    """Rate group -> method -> expected variants per document."""
    batch_docs: int = 64
    """Documents gathered per batch; their sentences are pooled and sorted by length."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: str = "auto"
    """``auto`` (bf16 on GPUs that support it, else fp16; on CPU bf16 where it has native bf16
    (AVX512-BF16, AMX), else fp32), ``float32``, ``bfloat16``, ``float16``.  Variants depend on
    the dtype: pin one (``float32``) for identical variants across mixed hardware."""
    back_translation: BackTranslationConfig = field(default_factory=BackTranslationConfig)
    """Back-translation: models per language, batching and decoding."""
    masked_lm: MaskedLMConfig = field(default_factory=MaskedLMConfig)
    """Masked-LM substitution: models per language, word choice and batching."""
    entity_swap: EntitySwapConfig = field(default_factory=EntitySwapConfig)
    """Entity swap: knowledge graph, dictionaries and the swap mode."""
    guard: dict[str, GuardConfig] = field(default_factory=_default_guards)
    """Method -> similarity bounds; a method missing here gets :class:`GuardConfig` defaults."""

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}")
        for where, names in (("methods", self.methods), ("guard", tuple(self.guard))):
            unknown = [m for m in names if m not in METHODS]
            if unknown:
                raise ValueError(f"{where}: unknown method(s) {unknown}; known: {list(METHODS)}")
        for group, per_method in self.rates.items():
            if group not in self.groups:
                raise ValueError(f"rates.{group}: no such group in groups ({sorted(self.groups)})")
            for method, rate in per_method.items():
                if method not in METHODS:
                    raise ValueError(f"rates.{group}.{method}: unknown method; known: {list(METHODS)}")
                if not 0.0 <= rate <= 16.0:
                    raise ValueError(f"rates.{group}.{method} must be in [0, 16], got {rate!r}")
        if self.batch_docs < 1:
            raise ValueError(f"batch_docs must be >= 1, got {self.batch_docs!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")

    def group_of(self, domain: str) -> str | None:
        """The rate group of a document's domain (first matching group), or None."""
        for group, patterns in self.groups.items():
            if any(fnmatch.fnmatchcase(domain, p) for p in patterns):
                return group
        return None

    def rate(self, domain: str, method: str) -> float:
        """Expected variants per document of ``domain`` for ``method``."""
        group = self.group_of(domain)
        return 0.0 if group is None else float(self.rates.get(group, {}).get(method, 0.0))

    def guard_for(self, method: str) -> GuardConfig:
        return self.guard.get(method, GuardConfig())


def load_augment_config(params: Mapping[str, Any] | None) -> AugmentConfig:
    """Build the config from the whole params dict (its ``augment`` section)."""
    return build_config(AugmentConfig, dict((params or {}).get("augment") or {}), "augment")
