"""Heuristic quality rules: Gopher quality, Gopher repetition, C4, and their CJK counterparts.

Every rule answers its own snake_case drop reason (``gopher_too_few_words``,
``dup_line_frac``, ``c4_too_few_sentences``, ``cjk_too_few_chars`` ...), or None.

Sources of the defaults:

* Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models: Methods,
  Analysis & Insights from Training Gopher", Section A.1.1 and Table A1 (word count 50 to
  100,000; mean word length 3 to 10; symbol-to-word ratio 0.1 for ``#`` and ellipsis; at most
  90% of lines starting with a bullet and 30% ending with an ellipsis; at least 80% of words
  with a letter; at least 2 of the stop words *the, be, to, of, and, that, have, with*;
  duplicate line/paragraph fractions 0.3, duplicate line/paragraph character fractions
  0.2/0.2, top 2/3/4-gram character fractions 0.20/0.18/0.16, duplicate 5..10-gram character
  fractions 0.15..0.10).
* C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", Section 2.2 (lines ending in terminal punctuation, at least 3
  words per line, at least 5 sentences, no "lorem ipsum", no lines with "javascript", no
  curly brackets), plus the reference code's policy/cookie lines and 1000-character words.

Chinese has no spaces, so word-based rules are meaningless on it.  Documents whose ``lang``
is ``zh`` (or, without a ``lang``, whose Han share is at least 0.25) take the CJK rules:
characters instead of words for length and n-gram repetition, a CJK-character ratio instead
of the alphabetic-word ratio, and Chinese terminal punctuation for C4.  Their thresholds are
our own, set on the bundled corpora so that clean Chinese Wikipedia, statutes and abstracts
pass while repeated and boilerplate-only pages fail (tests/test_clean_quality.py shows both).

Words come from the shared tokenizer (:func:`etl.clean.tokenize.tokenize`), the same one TF-IDF
and dedup use; the rules themselves run over lists precomputed once per document.
"""
from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from etl.clean.ngrams import NGramCounter
from etl.clean.tokenize import CJK_PUNCT, DEFAULT_TOKENIZER, HAN, TokenizerConfig, count_chars, count_han, tokenize
from etl.core.document import Document

CJK_LANGS = ("zh", "ja", "ko")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_HAN_RUN = re.compile(f"[{HAN}]+")
_CJK_UNITS = re.compile(f"[{HAN}]|[^\\s{HAN}{CJK_PUNCT}]+")
_LATIN_RUN = re.compile("[A-Za-z\u00c0-\u024f]+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(f"[.!?]+[\"'”’」』)）]*(?=\\s|$|[{HAN}])|[。！？．]+[\"'”’」』)）]*")
_PUNCT_STR = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" "，。！？：；、（）【】《》“”‘’「」『』…—·～"
C4_END = (".", "?", "!", '"', "'", "。", "！", "？", "．", "”", "’", "」", "』")  # ． : full-width stop of Chinese science texts
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
#: Chinese counterparts of Gopher's stop words (the most frequent function words).
CJK_STOP_WORDS = ("的", "了", "是", "在", "和", "有", "不", "这")


@dataclass(frozen=True, kw_only=True)
class GopherQualityConfig:
    """``clean.quality.gopher``: Rae et al. 2021, Table A1 / Section A.1.1."""

    enabled: bool = True
    """Apply the Gopher quality rules to non-CJK documents."""
    min_words: int = 50
    """Words (tokens with a letter or digit); Gopher: 50."""
    max_words: int = 100_000
    """Words; Gopher: 100,000."""
    min_mean_word_chars: float = 3.0
    """Mean word length in characters; Gopher: 3."""
    max_mean_word_chars: float = 10.0
    """Mean word length in characters; Gopher: 10."""
    max_symbol_word_ratio: float = 0.1
    """``#`` per word and ellipses per word, each; Gopher: 0.1."""
    max_bullet_lines_frac: float = 0.9
    """Lines starting with a bullet (• or -); Gopher: 0.9."""
    max_ellipsis_lines_frac: float = 0.3
    """Lines ending with an ellipsis; Gopher: 0.3."""
    min_alpha_words_frac: float = 0.8
    """Tokens containing a letter; Gopher: 0.8."""
    min_stop_words: int = 2
    """Distinct stop words present; Gopher: 2."""
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS
    """Gopher's eight English stop words."""


def _check_ngram_fractions(config: object, names: tuple[str, ...]) -> None:
    """Validate ``{n: fraction}`` fields and store them as plain dicts (they pickle for workers)."""
    for name in names:
        value = {int(n): float(f) for n, f in dict(getattr(config, name)).items()}
        if any(n < 1 or not 0.0 <= f <= 1.0 for n, f in value.items()):
            raise ValueError(f"{name}: n must be >= 1 and fractions within [0, 1], got {value}")
        object.__setattr__(config, name, value)


@dataclass(frozen=True, kw_only=True)
class RepetitionConfig:
    """``clean.quality.repetition``: Gopher repetition rules, Rae et al. 2021, Table A1."""

    enabled: bool = True
    """Apply the repetition rules (to all documents; CJK ones use character n-grams)."""
    dup_line_frac: float = 0.3
    """Duplicate lines / lines; Gopher: 0.30."""
    dup_para_frac: float = 0.3
    """Duplicate paragraphs / paragraphs; Gopher: 0.30."""
    dup_line_char_frac: float = 0.2
    """Characters in duplicate lines / characters; Gopher: 0.20."""
    dup_para_char_frac: float = 0.2
    """Characters in duplicate paragraphs / characters; Gopher: 0.20."""
    top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """n -> max characters covered by the most frequent word n-gram / characters; Gopher."""
    dup_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    """n -> max characters in repeated word n-grams / characters; Gopher."""

    def __post_init__(self) -> None:
        _check_ngram_fractions(self, ("top_ngram_char_frac", "dup_ngram_char_frac"))


@dataclass(frozen=True, kw_only=True)
class C4Config:
    """``clean.quality.c4``: Raffel et al. 2020, Section 2.2, and the C4 reference code."""

    enabled: bool = True
    """Apply the C4 rules."""
    min_sentences: int = 1
    """Sentences on qualifying lines (C4: 5, counted per web page).  Our records are often
    one paragraph, answer or section (5 drops a third of clean Chinese Wikipedia paragraphs
    and most MedQuAD answers), and length is already enforced by the Gopher/CJK minimums, so
    we require one qualifying sentence; set 5 for C4 parity."""
    min_words_per_line: int = 3
    """Words on a qualifying line; C4: 3.  CJK lines count ``cjk_chars_per_word`` Han characters as a word."""
    cjk_chars_per_word: float = 1.5
    """Mean characters per jieba word on Chinese text (1.5 on the bundled corpora)."""
    max_word_chars: int = 1000
    """Lines holding a longer token do not qualify (C4 reference code)."""
    terminal_punct: bool = True
    """With ``remove_lines``, only lines ending in terminal punctuation are kept (C4; Chinese
    。！？ count).  Sentences are counted on every line that passes the other line rules, so
    a one-line record whose last fragment is an attribution ("NIH: ...") still counts the
    complete sentences before it; C4 counted only lines that end a sentence, which suits
    line-structured web pages but drops single-paragraph records."""
    lorem_ipsum: bool = True
    """Drop documents containing "lorem ipsum" (C4)."""
    javascript: bool = True
    """Lines mentioning "javascript" do not qualify (C4)."""
    policy: bool = True
    """Lines with cookie / privacy-policy / terms-of-use phrases do not qualify (C4 code)."""
    curly_bracket: bool = False
    """Drop documents containing ``{`` (C4 removed code this way).  Off: the HTML step keeps
    code on purpose; set true for C4 parity."""
    remove_lines: bool = False
    """Delete non-qualifying lines from kept documents (C4 does).  Off: it would delete
    headings, list items and code that the HTML step keeps; set true for C4 parity."""
    remove_citations: bool = True
    """Strip Wikipedia citation marks ``[1]``, ``[edit]`` from lines (C4 reference code)."""


@dataclass(frozen=True, kw_only=True)
class CjkQualityConfig:
    """``clean.quality.cjk``: CJK counterparts of the Gopher rules (characters, not words)."""

    enabled: bool = True
    """Apply the CJK rules to CJK documents."""
    min_chars: int = 30
    """Non-space characters; a Chinese character carries about one English word's worth, so
    this is below Gopher's 50 words (one or two sentences)."""
    max_chars: int = 200_000
    """Non-space characters (Gopher's 100,000 words at 2 characters per word)."""
    min_cjk_ratio: float = 0.2
    """Han characters / non-space characters; the Chinese counterpart of the alphabetic-word
    ratio (zh-CN handbook pages with commands and code: 0.25; prose: 0.8 and more)."""
    min_stop_chars: int = 1
    """Distinct Chinese function characters (的 了 是 在 和 有 不 这) present; any running Chinese prose has one."""
    top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {4: 0.20, 6: 0.18, 8: 0.16})
    """n -> max characters covered by the most frequent n-gram of units (a Han character or a
    Latin word) / characters.  Gopher's word n-gram thresholds with n doubled, because a
    Chinese word averages 1.5-2 characters (Gopher's own 2..4 on characters drops statutes
    and abstracts that merely reuse their terms)."""
    dup_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {10: 0.15, 12: 0.14, 14: 0.13, 16: 0.12, 18: 0.11, 20: 0.10})
    """n -> max characters in repeated unit n-grams / characters; Gopher's 5..10-word values with n doubled."""

    def __post_init__(self) -> None:
        _check_ngram_fractions(self, ("top_ngram_char_frac", "dup_ngram_char_frac"))


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """The ``clean.quality`` section."""

    gopher: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    """Gopher quality rules for non-CJK documents (Rae et al. 2021, Table A1), on the shared tokenizer's words."""
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    """Gopher repetition rules (duplicate lines, paragraphs and n-grams), all documents; CJK ones on character n-grams."""
    c4: C4Config = field(default_factory=C4Config)
    """C4 line and document rules (Raffel et al. 2020, Section 2.2), adapted to paragraph-sized records."""
    cjk: CjkQualityConfig = field(default_factory=CjkQualityConfig)
    """Rules for CJK documents on characters instead of words (our thresholds; Gopher's n-gram values with n doubled)."""
    apply_to_dialogues: bool = False
    """Apply the rules to dialogue/instruction records (``meta.segments``).  Off: chat turns
    are short and unpunctuated by nature; dialogues get their own validation."""


# ------------------------------------------------------------------------------ helpers


def find_duplicates(items: Sequence[str]) -> tuple[int, int]:
    """``(number of repeated items, characters in them)``, first occurrences not counted."""
    seen: set[str] = set()
    num_dup = chars_dup = 0
    for item in items:
        if item in seen:
            num_dup += 1
            chars_dup += len(item)
        else:
            seen.add(item)
    return num_dup, chars_dup


def top_ngram_chars(units: Sequence[str], n: int, sep: str = " ") -> int:
    """Characters covered by the most frequent n-gram (its length times its count)."""
    counts = collections.Counter(zip(*(units[i:] for i in range(n))))
    if not counts:
        return 0
    gram, num = counts.most_common(1)[0]
    return (sum(map(len, gram)) + len(sep) * (n - 1)) * num


def dup_ngram_chars(units: Sequence[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier n-gram, scanning greedily left to right
    and skipping past each repeat (Gopher's definition; overlapping repeats count once)."""
    grams = list(zip(*(units[i:] for i in range(n))))
    if len(set(grams)) == len(grams):
        return 0  # fast path: no n-gram occurs twice
    seen: set[tuple[str, ...]] = set()
    repeated = idx = 0
    while idx < len(grams):
        gram = grams[idx]
        if gram in seen:
            repeated += sum(map(len, gram))
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return repeated


def is_cjk_document(doc: Document) -> bool:
    """CJK rules apply when ``lang`` is zh/ja/ko, or (no lang) Han is >= 25% of letters."""
    if doc.lang:
        return doc.lang in CJK_LANGS
    num_han = count_han(doc.text)
    num_latin = count_chars(_LATIN_RUN, doc.text)
    return num_han > 0 and num_han / (num_han + num_latin) >= 0.25


# ------------------------------------------------------------------------------ rules


def gopher_quality(text: str, lines: list[str], tokens: list[str], config: GopherQualityConfig) -> str | None:
    """Gopher quality rules over precomputed lines and tokens; a reason or None."""
    # Over words, not punctuation tokens: Gopher counted whitespace-separated words ("he."),
    # and dialogue-heavy prose has one quote or comma token per three words.
    words = [t for t in tokens if t.strip(_PUNCT_STR)]  # not _is_symbol(t), inlined
    word_lens = list(map(len, words))
    num_words = len(word_lens)
    if num_words < config.min_words:
        return "gopher_too_few_words"
    if num_words > config.max_words:
        return "gopher_too_many_words"
    mean_len = sum(word_lens) / num_words
    if mean_len < config.min_mean_word_chars:
        return "gopher_short_mean_word"
    if mean_len > config.max_mean_word_chars:
        return "gopher_long_mean_word"
    if text.count("#") / num_words > config.max_symbol_word_ratio:
        return "gopher_hash_ratio"
    if (text.count("...") + text.count("…")) / num_words > config.max_symbol_word_ratio:
        return "gopher_ellipsis_ratio"
    return _gopher_lines(lines, config) or _gopher_words(tokens, config, words)


def _is_symbol(token: str) -> bool:
    # every character is punctuation (the empty token too): nothing is left after stripping them
    return not token.strip(_PUNCT_STR)


def _has_alpha(token: str) -> bool:
    return token.isalpha() or any(ch.isalpha() for ch in token)


def _gopher_lines(lines: list[str], config: GopherQualityConfig) -> str | None:
    num_lines = len(lines) or 1
    bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
    if bullets / num_lines > config.max_bullet_lines_frac:
        return "gopher_bullet_lines"
    ellipsis = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
    if ellipsis / num_lines > config.max_ellipsis_lines_frac:
        return "gopher_ellipsis_lines"
    return None


def _gopher_words(tokens: list[str], config: GopherQualityConfig, words: list[str]) -> str | None:
    # _has_alpha per word; the all-letter words (most of them) are skipped at C speed
    alpha = len(words) - sum(1 for t in itertools.filterfalse(str.isalpha, words) if not _has_alpha(t))
    if alpha / len(words) < config.min_alpha_words_frac:
        return "gopher_low_alpha_words"
    if config.min_stop_words and len(set(config.stop_words).intersection(tokens)) < config.min_stop_words:
        return "gopher_few_stop_words"
    return None


def repetition(text: str, units: list[str], top: dict[int, float], dup: dict[int, float], config: RepetitionConfig, unit_sep: str = " ") -> str | None:
    """Gopher repetition rules: duplicate paragraphs and lines, then n-gram repetition over ``units``."""
    num_chars = len(text) or 1
    paragraphs = _PARAGRAPHS.split(text.strip())
    num_dup, chars_dup = find_duplicates(paragraphs)
    if num_dup / len(paragraphs) > config.dup_para_frac:
        return "dup_para_frac"
    if chars_dup / num_chars > config.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = _LINES.split(text)
    num_dup, chars_dup = find_duplicates(lines)
    if num_dup / len(lines) > config.dup_line_frac:
        return "dup_line_frac"
    if chars_dup / num_chars > config.dup_line_char_frac:
        return "dup_line_char_frac"
    grams = NGramCounter(units)  # shares the n-gram ids as n grows through each loop
    for n, frac in sorted(top.items()):
        if len(units) >= n and grams.top_chars(n, len(unit_sep)) / num_chars > frac:
            return f"top_{n}_gram_frac"
    for n, frac in sorted(dup.items()):
        if len(units) < n:
            break  # longer n-grams do not fit either
        repeated = grams.dup_chars(n)
        if repeated is None:
            break  # no repeated n-gram, so no repeated longer one: each fraction is 0
        if repeated / num_chars > frac:
            return f"dup_{n}_gram_frac"
    return None


def _line_words(line: str, cjk: bool, chars_per_word: float) -> int:
    if not cjk:
        return len(line.split())
    num_han = count_han(line)
    if not num_han:
        return len(line.split())
    return int(num_han / chars_per_word) + len(_HAN_RUN.sub(" ", line).split())


def c4_rules(text: str, config: C4Config, cjk: bool = False) -> tuple[str | None, str]:
    """C4 rules: ``(reason or None, text with non-qualifying lines removed when remove_lines)``."""
    lower = text.lower()
    if config.lorem_ipsum and "lorem ipsum" in lower:
        return "c4_lorem_ipsum", text
    if config.curly_bracket and "{" in text:
        return "c4_curly_bracket", text
    kept: list[str] = []
    num_sentences = 0
    for raw in text.split("\n"):
        line = raw.strip()
        if config.remove_citations:
            line = _CITATION.sub("", line)
        if not _c4_line_ok(line, config, cjk, terminal_punct=False):
            continue
        # Complete sentences count even on a line whose last fragment lacks a full stop (a
        # one-line answer ending in an attribution); a menu or title line still has none.
        num_sentences += len(_SENTENCE_END.findall(line))
        if not config.terminal_punct or _ends_sentence(line):
            kept.append(line)
    if num_sentences < config.min_sentences:
        return "c4_too_few_sentences", text
    return None, "\n".join(kept) if config.remove_lines else text


def _ends_sentence(line: str) -> bool:
    return line.endswith(C4_END) and not line.endswith("...")


def _c4_line_ok(line: str, config: C4Config, cjk: bool, terminal_punct: bool = True) -> bool:
    if not line:
        return False
    if terminal_punct and config.terminal_punct and not _ends_sentence(line):
        return False
    words = line.split()
    if words and max(map(len, words)) > config.max_word_chars:
        return False
    if _line_words(line, cjk, config.cjk_chars_per_word) < config.min_words_per_line:
        return False
    lower = line.lower()
    if config.javascript and "javascript" in lower:
        return False
    return not (config.policy and any(p in lower for p in POLICY_SUBSTRINGS))


def cjk_quality(text: str, lines: list[str], config: CjkQualityConfig, gopher: GopherQualityConfig) -> str | None:
    """CJK counterparts: character length, CJK ratio, function characters, bullet/ellipsis lines."""
    num_chars = len(text) - text.count(" ") - text.count("\n")
    if num_chars < config.min_chars:
        return "cjk_too_few_chars"
    if num_chars > config.max_chars:
        return "cjk_too_many_chars"
    num_han = count_han(text)
    if num_han / num_chars < config.min_cjk_ratio:
        return "cjk_low_cjk_ratio"
    if config.min_stop_chars and sum(1 for ch in CJK_STOP_WORDS if ch in text) < config.min_stop_chars:
        return "cjk_few_stop_chars"
    if text.count("#") / num_chars > gopher.max_symbol_word_ratio:
        return "cjk_hash_ratio"
    reason = _gopher_lines(lines, gopher)
    return f"cjk_{reason[len('gopher_'):]}" if reason else None


def check_quality(doc: Document, config: QualityConfig, tokenizer: TokenizerConfig = DEFAULT_TOKENIZER) -> str | None:
    """Run every enabled rule on ``doc``; answer the first reason.  With ``c4.remove_lines``
    the document's text is replaced by its qualifying lines."""
    if "segments" in doc.meta and not config.apply_to_dialogues:
        return None
    text = doc.text
    cjk = is_cjk_document(doc)
    lines = text.splitlines()
    # the first reason wins, so repetition runs only on documents that pass the length rules
    if cjk:
        reason = config.cjk.enabled and cjk_quality(text, lines, config.cjk, config.gopher)
        if not reason and config.repetition.enabled:
            reason = repetition(text, _CJK_UNITS.findall(text), config.cjk.top_ngram_char_frac,
                                config.cjk.dup_ngram_char_frac, config.repetition, unit_sep="")
    else:
        tokens = tokenize(text, tokenizer)
        reason = config.gopher.enabled and (gopher_quality(text, lines, tokens, config.gopher) if tokens else "gopher_too_few_words")
        if not reason and config.repetition.enabled:
            reason = repetition(text, tokens, config.repetition.top_ngram_char_frac, config.repetition.dup_ngram_char_frac, config.repetition)
    if reason:
        return reason
    if config.c4.enabled:
        reason, new_text = c4_rules(text, config.c4, cjk)
        if reason:
            return reason
        if new_text != text and "segments" not in doc.meta:
            doc.text = new_text
    return None
