"""Character noise: typo-like edits that leave protected spans (entities) untouched.

Each edit picks a position outside the protected spans and applies one of: delete the
character, duplicate it, swap it with the next one (both outside the spans), or replace a Latin
letter by a neighbouring letter. The number of edits is ``max(1, round(rate * editable
characters))``; all choices come from the caller's ``rng`` (STYLE rule 8). Used by the
evaluation's robustness probes (trainer/probes.py) as an adversarial perturbation beside the
augment stage's entity-preserving substitutions.
"""
from __future__ import annotations

import random
from collections.abc import Iterable

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def protected_mask(text: str, spans: Iterable[str]) -> list[bool]:
    """True at every character inside an occurrence of one of ``spans``."""
    mask = [False] * len(text)
    for span in spans:
        if not span:
            continue
        start = text.find(span)
        while start >= 0:
            for i in range(start, start + len(span)):
                mask[i] = True
            start = text.find(span, start + 1)
    return mask


def char_noise(text: str, rng: random.Random, rate: float = 0.1, protect: Iterable[str] = ()) -> str:
    """``text`` with about ``rate`` of its editable characters edited (at least one edit when
    any character is editable); characters of ``protect`` spans and whitespace are never edited."""
    chars = list(text)
    keep = protected_mask(text, protect)
    editable = [i for i, c in enumerate(chars) if not keep[i] and not c.isspace()]
    if not editable:
        return text
    for _ in range(max(1, round(rate * len(editable)))):
        if not editable:
            break
        i = rng.choice(editable)
        kind = rng.choice(("delete", "duplicate", "swap", "replace"))
        if kind == "swap" and i + 1 < len(chars) and i + 1 in editable:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif kind == "replace" and chars[i].lower() in _LETTERS:
            chars[i] = rng.choice(_LETTERS.replace(chars[i].lower(), ""))
        elif kind == "duplicate":
            chars[i] = chars[i] * 2
        else:
            chars[i] = ""
        editable.remove(i)
    return "".join(chars)
