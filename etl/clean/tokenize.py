"""The one word tokenizer that quality rules, TF-IDF and dedup share.

Text is split into runs: Han/kana runs go to jieba (with optional user dictionaries),
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
_HAN_CHAR = re.compile(f"[{HAN}]")
# Treebank rules split a period only at the end of their input, so sentences are cut first.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """Tokenizer settings (the ``tokenizer:`` section of params.yaml)."""

    user_dicts: tuple[str, ...] = ()
    """jieba user dictionary files (one ``word [freq] [pos]`` per line) loaded at start."""
    hmm: bool = True
    """Let jieba's HMM find words missing from its dictionary (jieba's own default)."""
    english: str = "treebank"
    """``treebank``: NLTKWordTokenizer (splits clitics, keeps abbreviations);
    ``wordpunct``: WordPunctTokenizer (``\\w+|[^\\w\\s]+``, about 3x faster)."""
    lowercase: bool = False
    """Lower-case Latin tokens."""

    def __post_init__(self) -> None:
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


@functools.lru_cache(maxsize=2)
def _latin(kind: str):
    from nltk.tokenize import NLTKWordTokenizer, WordPunctTokenizer

    return NLTKWordTokenizer() if kind == "treebank" else WordPunctTokenizer()


def split_runs(text: str) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, segment)`` with kind ``han``, ``punct`` or ``other``."""
    for match in _RUNS.finditer(text):
        kind = match.lastgroup
        yield kind, match.group(kind)


def tokenize(text: str, config: TokenizerConfig = DEFAULT_TOKENIZER) -> list[str]:
    """All tokens of ``text`` (words and punctuation), Chinese by jieba, Latin by NLTK."""
    jieba_tok = None
    latin = _latin(config.english)
    tokens: list[str] = []
    for kind, seg in split_runs(text):
        if kind == "han":
            if jieba_tok is None:
                jieba_tok = _jieba(config.user_dicts)
            tokens.extend(jieba_tok.lcut(seg, HMM=config.hmm))
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


def count_han(text: str) -> int:
    """Number of Han/kana characters in ``text``."""
    return len(_HAN_CHAR.findall(text))
