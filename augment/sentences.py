"""Sentence splitting with character spans, for Chinese and English (and mixed) text.

Rules:

* a line break always ends a sentence (paragraphs, list items, hard-wrapped Q&A lines);
* Chinese terminators ``。！？；…`` (and their full-width / doubled forms) end a sentence at
  once, together with any closing quotes or brackets that follow (``”」』）``);
* ``.``, ``!`` and ``?`` end a sentence only when followed by whitespace (or the end) and then
  not by a lower-case letter, and when the word before is not a known abbreviation
  (``Mr.``, ``e.g.``, ``U.S.``, single initials), so ``3.5``, ``e.g. this`` and ``Dr. Li`` stay whole;
* a sentence longer than ``max_chars`` is cut at the last clause mark (``，,；;：:``) or space
  before the limit, else hard at the limit, so every span fits a model's input.

Spans cover the sentence text without surrounding whitespace; the text between spans
(whitespace, nothing for Chinese) is kept verbatim when a document is rebuilt.

>>> [text[s:e] for s, e in split_sentences(text := "他来了。She left. Dr. Li stayed!")]
['他来了。', 'She left.', 'Dr. Li stayed!']
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_ZH_TERMINATORS = "。！？；…!?"
_CLOSERS = "”’」』）)】》\"'"
_ABBREVIATIONS = frozenset("""mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig figs no nos vol eq eqs approx dept est inc ltd co corp
jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.n p.m a.m ph.d m.d""".split())
_CLAUSE_MARKS = "，,；;：:、"
_ZH_END = re.compile(f"[。！？；…]+[{re.escape(_CLOSERS)}]*|[!?！？]+[{re.escape(_CLOSERS)}]*(?=[^\\s!?])")
_EN_END = re.compile(f"[.!?]+[{re.escape(_CLOSERS)}]*(?=\\s|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _is_abbreviation(text: str, dot_pos: int) -> bool:
    match = _WORD_BEFORE.search(text, 0, dot_pos)
    if not match:
        return False
    word = match.group(1).lower().rstrip(".")
    return word in _ABBREVIATIONS or len(word) == 1


def _en_boundary(text: str, match: re.Match) -> bool:
    end = match.end()
    rest = text[end:end + 3].lstrip()
    if rest and rest[0].islower():
        return False
    if text[match.start()] == "." and match.end() - match.start() == 1:
        return not _is_abbreviation(text, match.start())
    return True


def _line_sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = set()
    line = text[start:end]
    for match in _ZH_END.finditer(line):
        cuts.add(start + match.end())
    for match in _EN_END.finditer(line):
        if _en_boundary(line, match):
            cuts.add(start + match.end())
    spans, prev = [], start
    for cut in sorted(cuts) + [end]:
        spans.extend(_strip(text, prev, cut))
        prev = cut
    return spans


def _strip(text: str, start: int, end: int) -> list[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if end > start else []


def _cut_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    spans = []
    while end - start > max_chars:
        window = text[start:start + max_chars]
        cut = max(window.rfind(mark) for mark in _CLAUSE_MARKS)
        if cut <= 0:
            cut = window.rfind(" ")
        cut = start + (cut + 1 if cut > 0 else max_chars)
        spans.extend(_strip(text, start, cut))
        start = cut
    spans.extend(_strip(text, start, end))
    return spans


def split_sentences(text: str, max_chars: int = 0) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text``, in order, non-overlapping.

    ``max_chars`` > 0 cuts longer sentences (see the module rules).
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for line_match in re.finditer(r"[^\n]+", text):
        for s, e in _line_sentences(text, line_match.start(), line_match.end()):
            spans.extend(_cut_long(text, s, e, max_chars) if max_chars and e - s > max_chars else [(s, e)])
        pos = line_match.end()
    assert pos <= len(text)
    return spans


def rebuild(text: str, spans: Sequence[tuple[int, int]], replacements: Sequence[str]) -> str:
    """``text`` with each span replaced by the matching string (separators kept verbatim)."""
    out, prev = [], 0
    for (start, end), new in zip(spans, replacements, strict=True):
        out.append(text[prev:start])
        out.append(new)
        prev = end
    out.append(text[prev:])
    return "".join(out)


def map_sentences(text: str, fn: Callable[[str], str], max_chars: int = 0) -> str:
    """Apply ``fn`` to every sentence of ``text`` and rebuild it (a convenience for tests and loops)."""
    spans = split_sentences(text, max_chars)
    return rebuild(text, spans, [fn(text[s:e]) for s, e in spans])
