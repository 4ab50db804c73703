"""Invalid-character filter with configurable allowed character classes.

Characters outside the allowed classes are removed; a document whose removed share exceeds
``max_invalid_frac`` is dropped as ``invalid_chars`` (it was mostly emoji, mojibake, box
drawing or a script we do not train on).

Presets:

* ``default``: Latin letters (with accents), digits, Han, kana, Greek, CJK and Latin
  punctuation, full-width forms, common symbols (currency, math, degree, arrows), whitespace.
* ``seed``: the seed project's rule, ``re.sub(r"[^a-zA-Z0-9\\u4e00-\\u9fa5\\s]", "", text)``:
  ASCII letters and digits, the basic CJK block and whitespace only (all punctuation goes).

Or give ``classes`` explicitly (names from :data:`CHAR_CLASSES`) plus ``extra_chars``.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from etl.clean.normalize import normalize_whitespace

#: Named classes as regex character-class bodies.
CHAR_CLASSES: dict[str, str] = {
    "ascii_letters": "a-zA-Z",
    "digits": "0-9",
    "latin_letters": "a-zA-Z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "han_basic": "\u4e00-\u9fa5",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef",
    "kana": "\u3040-\u30ff\u31f0-\u31ff",
    "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "greek": "\u0370-\u03ff",
    "cyrillic": "\u0400-\u04ff",
    "whitespace": "\\s",
    "ascii_punct": "!-/:-@\\[-`{-~",
    "general_punct": "\u00a1-\u00bf\u00d7\u00f7\u2010-\u205e",
    "cjk_punct": "\u3000-\u303f\ufe30-\ufe4f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u00b7",
    "fullwidth": "\uff01-\uff5e",
    "symbols": "\u2100-\u214f\u2190-\u21ff\u2200-\u22ff\u2460-\u24ff\u2500-\u257f\u25a0-\u25ff\u2600-\u26ff\u20a0-\u20cf\u2030-\u2031\u00b0\u00b1\u00b5",
}

PRESETS: dict[str, tuple[str, ...]] = {
    "default": ("latin_letters", "digits", "han", "kana", "greek", "whitespace", "ascii_punct", "general_punct",
                "cjk_punct", "fullwidth", "symbols"),
    "seed": ("ascii_letters", "digits", "han_basic", "whitespace"),
}


@dataclass(frozen=True, kw_only=True)
class CharFilterConfig:
    """The ``clean.chars`` section."""

    preset: str = "default"
    """``default`` (keeps CJK and Latin punctuation) or ``seed`` (the seed rule
    ``[^a-zA-Z0-9\\u4e00-\\u9fa5\\s]``); ignored when ``classes`` is given."""
    classes: tuple[str, ...] = ()
    """Allowed classes (names of CHAR_CLASSES); empty means the preset's."""
    extra_chars: str = ""
    """Further allowed characters, literally (e.g. ``"©®"``)."""
    max_invalid_frac: float = 0.2
    """Fraction of characters (0..1) outside the allowed classes above which the document is
    dropped as ``invalid_chars``; our choice: a document a fifth junk is not worth repairing."""
    remove: bool = True
    """Delete invalid characters from kept documents (else only measure)."""

    def __post_init__(self) -> None:
        if not self.classes and self.preset not in PRESETS:
            raise ValueError(f"clean.chars.preset must be one of {list(PRESETS)}, got {self.preset!r}")
        unknown = [c for c in self.classes if c not in CHAR_CLASSES]
        if unknown:
            raise ValueError(f"clean.chars.classes: unknown class(es) {unknown}; known: {sorted(CHAR_CLASSES)}")
        if not 0.0 <= self.max_invalid_frac <= 1.0:
            raise ValueError(f"clean.chars.max_invalid_frac must be within [0, 1], got {self.max_invalid_frac}")

    @property
    def allowed_classes(self) -> tuple[str, ...]:
        return self.classes or PRESETS[self.preset]


@functools.lru_cache(maxsize=16)
def invalid_pattern(classes: tuple[str, ...], extra_chars: str = "") -> re.Pattern:
    """A compiled regex matching runs of characters outside ``classes`` and ``extra_chars``."""
    body = "".join(CHAR_CLASSES[c] for c in classes)
    if extra_chars:
        body += "".join("\\" + ch if ch in "\\]^-[" else ch for ch in extra_chars)
    return re.compile(f"[^{body}]+")


def filter_chars(text: str, config: CharFilterConfig = CharFilterConfig()) -> tuple[str, int]:
    """``(text without invalid characters, number removed)``; whitespace is re-collapsed."""
    pattern = invalid_pattern(config.allowed_classes, config.extra_chars)
    num_invalid = 0
    for match in pattern.finditer(text):
        num_invalid += match.end() - match.start()
    if not num_invalid:
        return text, 0
    return normalize_whitespace(pattern.sub("", text)), num_invalid
