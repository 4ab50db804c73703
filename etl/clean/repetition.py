"""Removal of repeated sentences and boilerplate lines inside one document.

Three passes, each counted in ``meta`` (``num_dup_lines_removed``,
``num_dup_sentences_removed``, ``num_boilerplate_lines_removed``):

1. boilerplate lines: lines matching one of ``boilerplate_patterns`` (share buttons,
   "all rights reserved", "阅读全文", "点击查看" ...) are deleted;
2. repeated lines: a line identical (after trimming) to an earlier line of at least
   ``min_line_chars`` characters is deleted (short repeats such as ``}`` or ``Yes`` stay);
3. repeated sentences: inside the remaining text, a sentence (ended by . ! ? 。！？) identical
   to an earlier one of at least ``min_sentence_chars`` characters is deleted; this catches
   machine-translation loops and copy-paste repeats within one paragraph.

Documents with ``meta.segments`` (dialogues, instructions) are left alone, so their
character offsets stay valid.  The function is idempotent.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEFAULT_BOILERPLATE = (
    r"^(?:share|tweet|print|email)(?: this)?(?: (?:page|article|story))?[:!]?$",
    r"all rights reserved",
    r"^copyright\s*(?:©|\(c\))?\s*\d{4}",
    r"^(?:read more|continue reading|click here|back to top|skip to (?:main )?content)\W*$",
    r"^(?:版权所有|本文(?:来源|转载)|阅读全文|点击(?:查看|这里|进入)|返回(?:顶部|首页)|上一篇|下一篇|分享到)",
    r"^(?:免责声明|责任编辑)[:：]",
)
#: A sentence: the shortest run up to terminal punctuation (ASCII only before a space, so
#: "12.1." and "3.14" do not split) or the end of the line; pieces always re-join to the line.
_SENTENCE = re.compile(r".+?(?:[.!?]+(?=\s|$)|[。！？]+[”’」』）)]*|$)")


@dataclass(frozen=True, kw_only=True)
class RepetitionRemovalConfig:
    """The ``clean.dedup_lines`` section."""

    enabled: bool = True
    """Remove repeated lines, sentences and boilerplate lines inside each document."""
    min_line_chars: int = 10
    """Characters; shorter repeated lines (code braces, table cells) are kept."""
    min_sentence_chars: int = 10
    """Characters; shorter repeated sentences ("Yes." "好的。") are kept."""
    boilerplate_patterns: tuple[str, ...] = DEFAULT_BOILERPLATE
    """Case-insensitive regexes; a line matching one is deleted."""

    def __post_init__(self) -> None:
        for pattern in self.boilerplate_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"clean.dedup_lines.boilerplate_patterns: bad regex {pattern!r}: {exc}") from None


def _anchored(pattern: str) -> bool:
    """Whether ``pattern`` can only match at the start of a string, so ``match`` finds what
    ``search`` would: it begins with ``^`` and has no ``|`` outside groups (escapes, character
    classes and ``(?#...)`` comments skipped).  Without MULTILINE (a global ``(?m)`` would have
    to come first, before the ``^``) that ``^`` matches only at position 0."""
    if not pattern.startswith("^"):
        return False
    depth, i, n = 0, 1, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":  # a character class; a "]" first (after an optional "^") is literal
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif pattern.startswith("(?#", i):
            i = pattern.find(")", i)
            if i < 0:
                return False
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return False
        i += 1
    return True


@functools.lru_cache(maxsize=8)
def _boilerplate(patterns: tuple[str, ...]):
    """``is_boilerplate(line) -> bool`` for the case-insensitive ``patterns``, or None.  The
    patterns anchored at the start are tried only there (``match``), the others anywhere: one
    search of all of them tried every alternative at every position (6x slower)."""
    if not patterns:
        return None
    def either(group: list[str]) -> re.Pattern:
        return re.compile("|".join(f"(?:{p})" for p in group), re.IGNORECASE)

    starts = [p for p in patterns if _anchored(p)]
    anywhere = [p for p in patterns if not _anchored(p)]
    tests = ([either(starts).match] if starts else []) + ([either(anywhere).search] if anywhere else [])
    return lambda line: any(test(line) for test in tests)


def _dedup_sentences(line: str, seen: set[str], min_chars: int) -> tuple[str, int]:
    pieces = [piece for piece in _SENTENCE.findall(line) if piece]
    if len(pieces) < 2 and not (pieces and pieces[0].strip() in seen):
        for piece in pieces:
            if len(piece.strip()) >= min_chars:
                seen.add(piece.strip())
        return line, 0
    kept, removed = [], 0
    for piece in pieces:
        key = piece.strip()
        if len(key) >= min_chars and key in seen:
            removed += 1
            continue
        if len(key) >= min_chars:
            seen.add(key)
        kept.append(piece)
    return "".join(kept).strip(), removed


def remove_repetition(text: str, config: RepetitionRemovalConfig = RepetitionRemovalConfig()) -> tuple[str, dict[str, int]]:
    """``(text without boilerplate, repeated lines and repeated sentences, counts)``."""
    boiler = _boilerplate(config.boilerplate_patterns)
    counts = {"num_boilerplate_lines_removed": 0, "num_dup_lines_removed": 0, "num_dup_sentences_removed": 0}
    seen_lines: set[str] = set()
    seen_sentences: set[str] = set()
    out: list[str] = []
    for line in text.split("\n"):
        key = line.strip()
        if key and boiler is not None and boiler(key):
            counts["num_boilerplate_lines_removed"] += 1
            continue
        if len(key) >= config.min_line_chars:
            if key in seen_lines:
                counts["num_dup_lines_removed"] += 1
                continue
            seen_lines.add(key)
        new_line, removed = _dedup_sentences(line, seen_sentences, config.min_sentence_chars)
        counts["num_dup_sentences_removed"] += removed
        if removed and not new_line:
            continue
        out.append(new_line)
    if not any(counts.values()):
        return text, counts
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip(), counts
