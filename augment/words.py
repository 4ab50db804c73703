"""Words with character spans and part-of-speech tags, for masking and entity detection.

Han runs go through ``jieba.posseg`` (one pass gives the words for whole-word masking and the
``nr``/``ns``/``nt`` tags for entities); Latin words and numbers are found by a regular
expression.  jieba's tokenizer is built once per process per set of user dictionaries and
extra words (the knowledge-graph surfaces, so they stay whole).
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from etl.clean.tokenize import HAN

_HAN_RUN = re.compile(f"[{HAN}]+")
_LATIN = re.compile(r"[A-Za-z]+(?:['\-][A-Za-z]+)*|\d+(?:[.,:]\d+)*%?")
_HAN_NUMERALS = frozenset("零〇一二三四五六七八九十百千万亿两几半第")


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a text: ``text[start:end]`` and its tag (jieba's, ``eng`` or ``m``)."""

    start: int
    end: int
    text: str
    pos: str


@functools.lru_cache(maxsize=8)
def pos_tokenizer(user_dicts: tuple[str, ...] = (), extra_words: tuple[tuple[str, str], ...] = ()):
    """A ``jieba.posseg.POSTokenizer`` with user dictionaries and ``(word, tag)`` pairs added.

    Not rjieba, which the shared word tokenizer uses: its ``tag`` segments and tags a fifth of
    the corpus Han runs differently from jieba.posseg (``benchmarks/results/segment.json``)."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    tok.initialize()
    for path in user_dicts:
        tok.load_userdict(path)
    for word, tag in extra_words:
        if _HAN_RUN.fullmatch(word):  # Latin surfaces are matched by the regex, not jieba
            tok.add_word(word, freq=max(tok.FREQ.get(word, 0), 100_000), tag=tag)
    return jieba.posseg.POSTokenizer(tok)


def segment(text: str, tokenizer) -> list[Word]:
    """All words of ``text`` in order (punctuation and spaces left out)."""
    found: list[Word] = []
    for run in _HAN_RUN.finditer(text):
        pos = run.start()
        for pair in tokenizer.cut(run.group(), HMM=True):
            end = pos + len(pair.word)
            found.append(Word(pos, end, pair.word, pair.flag))
            pos = end
    for match in _LATIN.finditer(text):
        pos = "m" if match.group()[0].isdigit() else "eng"
        found.append(Word(match.start(), match.end(), match.group(), pos))
    found.sort(key=lambda w: w.start)
    return found


def is_number(word: Word) -> bool:
    """Digits, or a Han word made only of numerals (三千, 第二), or jieba's numeral tag ``m``."""
    return word.pos in ("m", "mq") or any(c.isdigit() for c in word.text) or all(c in _HAN_NUMERALS for c in word.text)
