"""The quality guard: drop variants too close to their parent (no real change) or too far
from it (meaning drift).

Measure: **character-bigram Jaccard similarity** of the two texts, over multisets::

    sim(a, b) = |B(a) & B(b)| / |B(a) | B(b)|

where ``B(t)`` is the multiset of adjacent character pairs of ``t`` after lower-casing and
removing whitespace.  It works the same for Chinese (no word segmentation needed) and English,
is O(len) and is 1.0 only for texts identical up to case and spacing.  Replacing one word in
ten gives about 0.8; a fluent back-translation typically keeps 0.3-0.7; an unrelated text of
the same language scores below 0.1.

A variant is rejected with reason ``too_similar`` when ``sim >= max_similarity``, and
``too_different`` when ``sim < min_similarity`` or its length (characters) is outside
``[parent / max_length_ratio, parent * max_length_ratio]``.  Thresholds are per method
(``augment.guard`` in params.yaml).
"""
from __future__ import annotations

import collections

from augment.config import GuardConfig


def bigrams(text: str) -> collections.Counter:
    """Multiset of character bigrams of ``text`` (lower-cased, whitespace removed)."""
    chars = "".join(text.lower().split())
    if len(chars) < 2:
        return collections.Counter([chars]) if chars else collections.Counter()
    return collections.Counter(chars[i:i + 2] for i in range(len(chars) - 1))


def bigram_similarity(a: str, b: str) -> float:
    """Multiset Jaccard similarity of the character bigrams of ``a`` and ``b`` (1.0 for two empty texts)."""
    ba, bb = bigrams(a), bigrams(b)
    union = sum((ba | bb).values())
    return 1.0 if union == 0 else sum((ba & bb).values()) / union


def check_variant(parent: str, variant: str, config: GuardConfig) -> tuple[str | None, dict]:
    """``(reason or None, detail)``: detail holds the similarity and length ratio, rounded."""
    sim = bigram_similarity(parent, variant)
    ratio = (len(variant) + 1) / (len(parent) + 1)
    detail = {"similarity": round(sim, 4), "length_ratio": round(ratio, 4)}
    if sim >= config.max_similarity:
        return "too_similar", detail
    if sim < config.min_similarity:
        return "too_different", detail
    if not 1.0 / config.max_length_ratio <= ratio <= config.max_length_ratio:
        return "too_different", detail
    return None, detail
