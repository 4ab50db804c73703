"""Text normalisation: Unicode NFKC, control characters, whitespace, width folding, hard wraps,
and optional Traditional-to-Simplified Chinese conversion.

Every function here is pure and idempotent (``normalize_text(normalize_text(t)) ==
normalize_text(t)``), which the tests check on the real corpora.

Width folding: NFKC folds full-width Latin letters and digits (``ＡＢＣ１２３``) to ASCII and
half-width katakana to full width.  It would also fold Chinese full-width punctuation
(``，？！：；（）``) and ``…`` to ASCII, which is wrong for Chinese typography, so by default
(``punct_width: keep``) those characters are protected from NFKC and stay as written.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from etl.clean.tokenize import HAN

#: Full-width punctuation of the FF00 block (not letters or digits) and the ellipsis.
_FULLWIDTH_PUNCT = [chr(c) for c in range(0xFF01, 0xFF66) if not chr(c).isalnum()] + ["\u2026"]
#: Private-use placeholders (U+F0000 plane) that NFKC leaves alone; real private-use
#: characters are removed before NFKC, so placeholders never collide with input.
_PROTECT = str.maketrans({ch: chr(0xF0000 + i) for i, ch in enumerate(_FULLWIDTH_PUNCT)})
_UNPROTECT = str.maketrans({chr(0xF0000 + i): ch for i, ch in enumerate(_FULLWIDTH_PUNCT)})

_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x0b\x0c\x85]")
#: Control (Cc, except tab and newline), format (Cf: zero-width spaces, BOM, soft hyphen,
#: bidi marks), private-use (Co) and surrogate (Cs) characters, and non-characters.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufeff\ufff0-\ufffb\uffa0\ue000-\uf8ff\U000f0000-\U0010ffff\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]"
)
_SPACES = re.compile(r"[^\S\n]+")  # any run of whitespace other than newline
_TRAILING = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_TERMINAL = tuple(".!?:;。！？：；…\"'”’」』)）]】>")
_BULLET = re.compile(r"^(?:[-*•·‣◦▪●○■□◆>#|+]|\d{1,3}[.)、]|[a-zA-Z][.)]\s|[（(]\d{1,3}[)）]|[一二三四五六七八九十]+、)")
_HAN_START = re.compile(f"^[{HAN}]")
_HAN_END = re.compile(f"[{HAN}]$")


@dataclass(frozen=True, kw_only=True)
class NormalizeConfig:
    """The ``clean.normalize`` section."""

    nfkc: bool = True
    """Apply Unicode NFKC (compatibility characters, ligatures, full-width Latin to ASCII)."""
    punct_width: str = "keep"
    """``keep``: full-width CJK punctuation (，？！：；（）) and … stay as written;
    ``half``: plain NFKC, which folds them to ASCII."""
    unwrap_lines: bool = True
    """Join hard-wrapped lines inside a paragraph (Gutenberg books, mailing lists): a line is
    joined with the next when it is at least ``unwrap_min_chars`` long, does not end in
    terminal or closing punctuation, and the next line does not start a list item."""
    unwrap_min_chars: int = 40
    """Display columns (a Han character counts two); shorter lines are headings or verse and
    stay on their own (Gutenberg wraps at 70-75 columns)."""
    t2s: bool = False
    """Convert Traditional to Simplified Chinese with OpenCC (``t2s``); off by default
    because it rewrites the source text."""
    opencc_config: str = "t2s"
    """OpenCC conversion profile (``t2s``, ``tw2s``, ``hk2s``, ``tw2sp`` with phrases)."""

    def __post_init__(self) -> None:
        if self.punct_width not in ("keep", "half"):
            raise ValueError(f"clean.normalize.punct_width must be 'keep' or 'half', got {self.punct_width!r}")
        if self.unwrap_min_chars < 1:
            raise ValueError(f"clean.normalize.unwrap_min_chars must be >= 1, got {self.unwrap_min_chars}")


def remove_invisible(text: str) -> str:
    """Unify line breaks to ``\\n`` and delete control, format and private-use characters."""
    return _INVISIBLE.sub("", _LINE_BREAKS.sub("\n", text))


def apply_nfkc(text: str, keep_cjk_punct: bool = True) -> str:
    """NFKC, protecting full-width CJK punctuation when ``keep_cjk_punct``."""
    if text.isascii():
        return text
    if not keep_cjk_punct:
        return unicodedata.normalize("NFKC", text)
    return unicodedata.normalize("NFKC", text.translate(_PROTECT)).translate(_UNPROTECT)


def normalize_whitespace(text: str) -> str:
    """Collapse space runs (tabs, NBSP, ideographic space) to one space, trim lines, at most
    one blank line between paragraphs, no leading or trailing whitespace."""
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def display_width(text: str) -> int:
    """Columns on a terminal: Han and other wide characters count two (hard wraps are by width)."""
    return len(text) + sum(1 for ch in text if ch >= "\u1100" and unicodedata.east_asian_width(ch) in "WF")


def _joins(line: str, nxt: str, min_chars: int) -> bool:
    return display_width(line) >= min_chars and not line.endswith(_TERMINAL) and not _BULLET.match(nxt)


def _join(line: str, nxt: str) -> str:
    if _HAN_END.search(line) and _HAN_START.match(nxt):
        return line + nxt  # Chinese has no spaces between words
    if line.endswith("-") and len(line) > 1 and line[-2].isalpha():
        return line + nxt  # a word broken at a hyphen; keep the hyphen (well-known)
    return f"{line} {nxt}"


def unwrap_lines(text: str, min_chars: int = 40) -> str:
    """Join hard-wrapped lines within paragraphs (see :attr:`NormalizeConfig.unwrap_lines`).

    The joined line is tested again against the following line, so the result is a fixed
    point: unwrapping twice equals unwrapping once.
    """
    if "\n" not in text:
        return text
    out: list[str] = []
    for para in text.split("\n\n"):
        lines = para.split("\n")
        merged = [lines[0]]
        for nxt in lines[1:]:
            if nxt and merged[-1] and _joins(merged[-1], nxt, min_chars):
                merged[-1] = _join(merged[-1], nxt)
            else:
                merged.append(nxt)
        out.append("\n".join(merged))
    return "\n\n".join(out)


@functools.lru_cache(maxsize=4)
def _opencc(profile: str):
    import opencc

    return opencc.OpenCC(profile)


def to_simplified(text: str, profile: str = "t2s") -> str:
    """Traditional to Simplified Chinese with OpenCC (a no-op for text without Han)."""
    return _opencc(profile).convert(text)


def normalize_text(text: str, config: NormalizeConfig = NormalizeConfig()) -> str:
    """All normalisations in order: invisible characters, NFKC, whitespace, unwrap, t2s."""
    text = remove_invisible(text)
    if config.nfkc:
        text = apply_nfkc(text, keep_cjk_punct=config.punct_width == "keep")
    text = normalize_whitespace(text)
    if config.unwrap_lines:
        text = unwrap_lines(text, config.unwrap_min_chars)
    if config.t2s:
        text = to_simplified(text, config.opencc_config)
    return text
