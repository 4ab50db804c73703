"""The one word tokenizer that quality rules, TF-IDF and dedup share.

Text is split into runs: Han/kana runs go to the Chinese segmenter (jieba, or rjieba, the
binding of its Rust port jieba-rs, with the same dictionary and optional user dictionaries),
CJK punctuation becomes one token per character, and everything else goes to NLTK's
data-free ``NLTKWordTokenizer`` (the Treebank rules, no downloaded model) or, by option,
the faster ``WordPunctTokenizer``.

>>> tokenize("我们在北京学习 machine learning.")
['我们', '在', '北京', '学习', 'machine', 'learning', '.']
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Han ideographs (BMP blocks and extension A..F), compatibility ideographs, kana.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\U00020000-\U0002ebef"
#: CJK symbols and punctuation, full-width forms that NFKC leaves alone, CJK brackets.
CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\ufe30-\ufe4f\u2018-\u201f\u2026\u2014"
_RUNS = re.compile(f"(?P<han>[{HAN}]+)|(?P<punct>[{CJK_PUNCT}])|(?P<other>[^{HAN}{CJK_PUNCT}]+)")
_HAN_RUN = re.compile(f"[{HAN}]+")
# Treebank rules split a period only at the end of their input, so sentences are cut first.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SEGMENTERS = ("jieba", "rjieba")
# jieba's Han class (``jieba.re_han_default``, less the Latin it adds, which a Han run never holds)
_JIEBA_HAN = re.compile("([\u4e00-\u9fd5]+)")
_JIEBA_HAN_ONLY = re.compile("[\u4e00-\u9fd5]+")
# one user-dictionary line: word, optional " freq", optional " tag" (jieba's load_userdict grammar)
_USER_DICT_LINE = re.compile(r"^(.+?)(?: ([0-9]+))?(?: ([a-z]+))?$")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """Tokenizer settings (the ``tokenizer:`` section of params.yaml)."""

    segmenter: str = "rjieba"
    """Chinese segmenter: ``rjieba`` (jieba-rs, jieba's dictionary and algorithm, 4-19x faster) or
    ``jieba``.  On the 361,704 Han runs of the shared corpora they cut 361,702 identically (all
    without the HMM; with it jieba-rs keeps 常在 whole in two runs) and no clean or TF-IDF
    decision differs (``python -m benchmarks.segment``, docs/benchmarks.md#segment)."""
    user_dicts: tuple[str, ...] = ()
    """jieba user dictionary files (one ``word [freq] [pos]`` per line) loaded at start, by either segmenter."""
    hmm: bool = True
    """Let jieba's HMM find words missing from its dictionary (jieba's own default)."""
    english: str = "treebank"
    """``treebank``: NLTKWordTokenizer (splits clitics, keeps abbreviations);
    ``wordpunct``: WordPunctTokenizer (``\\w+|[^\\w\\s]+``, about 3x faster)."""
    lowercase: bool = False
    """Lower-case Latin tokens."""

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"tokenizer.segmenter must be one of {list(SEGMENTERS)}, got {self.segmenter!r}")
        if self.english not in ("treebank", "wordpunct"):
            raise ValueError(f"tokenizer.english must be 'treebank' or 'wordpunct', got {self.english!r}")


DEFAULT_TOKENIZER = TokenizerConfig()


@functools.lru_cache(maxsize=8)
def _jieba(user_dicts: tuple[str, ...]):
    import jieba

    logging.getLogger("jieba").setLevel(logging.WARNING)
    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    tok.initialize()
    for path in user_dicts:
        tok.load_userdict(path)
    return tok


def read_user_dict(path: str) -> list[tuple[str, int | None, str | None]]:
    """``(word, freq or None, tag or None)`` per non-empty line of a jieba user dictionary."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip().lstrip("\ufeff")
            if line:
                word, freq, tag = _USER_DICT_LINE.match(line).groups()
                entries.append((word, None if freq is None else int(freq), tag))
    return entries


@functools.lru_cache(maxsize=8)
def _rjieba(user_dicts: tuple[str, ...]):
    """An ``rjieba.Jieba`` with user dictionaries added word by word, as jieba's load_userdict
    does (a missing frequency becomes ``suggest_freq(word)`` in both libraries)."""
    import rjieba

    tok = rjieba.Jieba()
    for path in user_dicts:
        for word, freq, tag in read_user_dict(path):
            tok.add_word(word, freq, tag)
    return tok


def _cut_as_jieba(tok, hmm: bool, run: str) -> list[str]:
    """rjieba's words for a Han run, with jieba's handling of the characters outside jieba's Han
    class (kana, extension A/B.., compatibility ideographs, U+9FD6..): one token each, where
    jieba-rs would segment them with their neighbours."""
    if _JIEBA_HAN_ONLY.fullmatch(run):
        return tok.cut(run, hmm)
    words: list[str] = []
    for i, block in enumerate(_JIEBA_HAN.split(run)):
        words.extend(tok.cut(block, hmm) if i % 2 else block)
    return words


def han_segmenter(config: TokenizerConfig = DEFAULT_TOKENIZER):
    """``cut(han_run) -> list[str]`` for the configured Chinese segmenter."""
    if config.segmenter == "rjieba":
        return functools.partial(_cut_as_jieba, _rjieba(config.user_dicts), config.hmm)
    tok, hmm = _jieba(config.user_dicts), config.hmm
    return lambda run: tok.lcut(run, HMM=hmm)


_PORTABLE_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.UNICODE | re.VERBOSE  # same bits in ``regex``
# A rule can only change a sentence holding one of these characters (each pattern needs a literal
# one of them to match), keyed by NLTK's pattern text; a pattern missing here always runs.
_TREEBANK_TRIGGERS = {
    "([«“‘„]|[`]+)": "«“‘„`", '^\\"': '"', "(``)": "`", '([ \\(\\[{<])(\\"|\\\'{2})': "\"'",
    "(?i)(?<!\\w)(\\')(?!(?:re|ve|ll|m|t|s|d|n)\\b)(?=\\w)": "'",
    '([^\\.])(\\.)([\\]\\)}>"\\\'»”’ ]*+)\\s*$': ".", "([:,])([^\\d])": ":,", "([:,])$": ":,", "\\.{2,}": ".",
    "[;@#$%&]": ";@#$%&", "[\\u2012-\\u2015]": "\u2012\u2013\u2014\u2015", '([^\\.])(\\.)([\\]\\)}>"\\\']*)\\s*$': ".",
    "[?!]": "?!", "([^'])' ": "'", "[*]": "*", "[\\]\\[\\(\\)\\{\\}\\<\\>]": "[](){}<>", "--": "-",
    "([»”’])": "»”’", "''": "'", '"': '"', "([^' ])('[sS]|'[mM]|'[dD]|') ": "'",
    "([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ": "'",
    # Collapsing whitespace matters only to the later rules that match a literal space, and each
    # of those needs an apostrophe; the final ``split()`` ignores the whitespace itself.
    "\\s+": "'",
}
# The letters each (case-insensitive) contraction rule needs, keyed by NLTK's pattern text.
_CONTRACTION_NEEDLES = {
    "(?i)\\b(can)(?#X)(not)\\b": "cannot", "(?i)\\b(d)(?#X)('ye)\\b": "d'ye", "(?i)\\b(gim)(?#X)(me)\\b": "gimme",
    "(?i)\\b(gon)(?#X)(na)\\b": "gonna", "(?i)\\b(got)(?#X)(ta)\\b": "gotta", "(?i)\\b(lem)(?#X)(me)\\b": "lemme",
    "(?i)\\b(more)(?#X)('n)\\b": "more'n", "(?i)\\b(wan)(?#X)(na)(?=\\s)": "wanna",
    "(?i) ('t)(?#X)(is)\\b": "'tis", "(?i) ('t)(?#X)(was)\\b": "'twas",
}
#: The only non-ASCII characters that ``re``'s IGNORECASE matches to ASCII letters (İ ı ſ and
#: the Kelvin sign; tests/test_tokenize.py scans every code point): a sentence with one of them
#: runs every contraction rule, since ``str.lower`` does not map them to the letter.
_CASE_ODD = frozenset("\u0130\u0131\u017f\u212a")
# Characters the substitutions may add: spaces always; `` and '' only where a " was.
_QUOTE_DERIVED = frozenset("`'")


def _stdlib_pattern(pattern) -> re.Pattern:
    """NLTK's pattern (a ``regex`` pattern behind a ReDoS timeout wrapper since NLTK 3.9.3)
    recompiled with the standard ``re`` module."""
    inner = getattr(pattern, "_rx", pattern)
    return re.compile(inner.pattern, inner.flags & _PORTABLE_FLAGS)


class TreebankTokenizer:
    """NLTKWordTokenizer's rules, in NLTK's order, run by ``re`` instead of ``regex`` (about 2x),
    and each rule skipped where the sentence lacks every character the rule needs to match (the
    set of the sentence's characters is taken once: the rules only add spaces, and backquotes
    and apostrophes where a double quote was).  A skipped rule would have matched nothing, so
    the tokens are NLTK's: tests/test_tokenize.py compares them on the corpus slice and on
    random strings of the characters the rules look at."""

    def __init__(self, nltk_tokenizer) -> None:
        cls = type(nltk_tokenizer)
        pairs = [*cls.STARTING_QUOTES, *cls.PUNCTUATION, cls.PARENS_BRACKETS, cls.DOUBLE_DASHES]
        self._before = [self._rule(rx, sub) for rx, sub in pairs]
        self._after = [self._rule(rx, sub) for rx, sub in cls.ENDING_QUOTES]
        # (pattern, the letters it needs, lower-cased): these rules only insert spaces, so a
        # needle (which holds none) missing before them cannot appear between them
        self._contractions = [(_stdlib_pattern(rx), _CONTRACTION_NEEDLES.get(rx.pattern))
                              for rx in [*cls.CONTRACTIONS2, *cls.CONTRACTIONS3]]

    @staticmethod
    def _rule(rx, sub) -> tuple:
        pattern = _stdlib_pattern(rx)
        trigger = _TREEBANK_TRIGGERS.get(getattr(rx, "_rx", rx).pattern)
        return pattern.sub, sub, None if trigger is None else frozenset(trigger)

    def tokenize(self, text: str) -> list[str]:
        present = set(text)
        if '"' in present:
            present |= _QUOTE_DERIVED
        for sub, replacement, trigger in self._before:
            if trigger is None or not present.isdisjoint(trigger):
                text = sub(replacement, text)
        text = " " + text + " "
        for sub, replacement, trigger in self._after:
            if trigger is None or not present.isdisjoint(trigger):
                text = sub(replacement, text)
        lowered = text.lower() if _CASE_ODD.isdisjoint(present) else None
        for rx, needle in self._contractions:
            if lowered is None or needle is None or needle in lowered:
                text = rx.sub(r" \1 \2 ", text)
        return text.split()


def _treebank():
    """The fast :class:`TreebankTokenizer`; NLTK's own where this NLTK or Python cannot
    (possessive ``*+`` needs Python 3.11)."""
    from nltk.tokenize import NLTKWordTokenizer

    try:
        return TreebankTokenizer(NLTKWordTokenizer())
    except (AttributeError, TypeError, ValueError, re.error) as exc:
        logger.info("NLTK treebank rules kept on the regex module (%s)", exc)
        return NLTKWordTokenizer()


@functools.lru_cache(maxsize=3)
def _latin(kind: str):
    from nltk.tokenize import NLTKWordTokenizer, WordPunctTokenizer

    if kind == "treebank":
        return _treebank()
    return NLTKWordTokenizer() if kind == "treebank_stock" else WordPunctTokenizer()


def split_runs(text: str) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, segment)`` with kind ``han``, ``punct`` or ``other``."""
    for match in _RUNS.finditer(text):
        kind = match.lastgroup
        yield kind, match.group(kind)


def tokenize(text: str, config: TokenizerConfig = DEFAULT_TOKENIZER) -> list[str]:
    """All tokens of ``text`` (words and punctuation), Chinese by jieba/rjieba, Latin by NLTK."""
    cut = None
    latin = _latin(config.english)
    tokens: list[str] = []
    for kind, seg in split_runs(text):
        if kind == "han":
            if cut is None:
                cut = han_segmenter(config)
            tokens.extend(cut(seg))
        elif kind == "punct":
            tokens.append(seg)
        elif not seg.isspace():
            for sentence in _SENTENCE_END.split(seg):
                toks = latin.tokenize(sentence)
                tokens.extend(t.lower() for t in toks) if config.lowercase else tokens.extend(toks)
    return tokens


def is_word(token: str) -> bool:
    """A token with at least one letter or digit (not punctuation or a symbol)."""
    return any(ch.isalnum() for ch in token)


def words(text: str, config: TokenizerConfig = DEFAULT_TOKENIZER) -> list[str]:
    """Tokens that are words (see :func:`is_word`)."""
    return [t for t in tokenize(text, config) if is_word(t)]


def count_chars(runs: re.Pattern, text: str) -> int:
    """Number of characters of ``text`` in the runs that ``runs`` (a ``[class]+`` pattern) matches;
    one string made, where ``findall`` of single characters makes one per character."""
    return len(text) - len(runs.sub("", text))


def count_han(text: str) -> int:
    """Number of Han/kana characters in ``text``."""
    return count_chars(_HAN_RUN, text)
