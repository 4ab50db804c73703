"""Language identification (``lang`` annotation) and the language filter.

The classifier is py3langid (a NumPy port of langid.py; its 97-language model ships inside
the wheel, so nothing is downloaded at run time).  Its probabilities are normalised over all
97 languages, so "none of the allowed languages" can be detected.

Mixed-script rule.  Chinese technical pages often quote English commands, code and
untranslated paragraphs (the zh-CN Debian handbook pages are a third to a half English); a
byte-n-gram classifier then says ``en`` although a Chinese reader is the audience.  So:

1. ``han_share`` = Han characters / (Han characters + Latin letters), counted on the first
   ``max_chars`` characters.  A Han character carries about as much as a 3-letter English
   word, so even a 0.25 share means Chinese is a large part of the content.
2. If ``han_share >= zh_min_han_share`` and the text has no kana or Hangul (Japanese, Korean),
   the document is ``zh`` (``meta.lang_rule = "script"``), whatever the classifier says.
3. Otherwise the classifier decides (``meta.lang_rule = "classifier"``); a prediction outside
   ``allowed`` is dropped as ``lang_not_allowed``, one below ``min_score`` as ``low_lang_score``.

``meta.lang_score`` is the classifier's probability of the chosen language, and
``meta.han_share`` the share above.  Traditional and Simplified Chinese are both ``zh``.

Speed.  py3langid walks its byte n-gram automaton in a Python loop (about 1 us a byte, 29% of
the clean stage's time on the benchmark corpus).  :class:`CompiledLanguageIdentifier` walks it
in a numba kernel and hands py3langid's own scoring the same features in the same order with
the same counts, so every score is bit-identical (``tests/test_tokenize.py`` compares both on
the bundled corpus slice; all 17,357 texts of the shared corpora matched as well).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
from py3langid.langid import MODEL_FILE, RAW_FLOOR, LanguageIdentifier

from etl.clean.tokenize import count_chars
from etl.core.document import Document

_HAN_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN_RUN = re.compile("[A-Za-z\u00c0-\u024f]+")
_KANA_HANGUL = re.compile("[\u3040-\u30ff\uac00-\ud7af]")


@dataclass(frozen=True, kw_only=True)
class LangIdConfig:
    """The ``clean.langid`` section."""

    allowed: tuple[str, ...] = ("zh", "en")
    """ISO 639-1 codes to keep; empty keeps every language (annotation only)."""
    min_score: float = 0.5
    """Minimum normalised classifier probability (0..1) when the classifier decides; below it the
    document is ``low_lang_score``.  Our choice: 0.5 means the top language beats all others
    combined; FastText-based pipelines use 0.65 (CCNet) but langid.py's scores are flatter."""
    zh_min_han_share: float = 0.25
    """Han/(Han + Latin letters) at or above which a page is Chinese by the mixed-script rule."""
    max_chars: int = 5000
    """Characters classified (the head of the document); langid's cost is linear in length."""
    keep_given: bool = False
    """Trust a non-empty input ``lang`` field instead of classifying (filter still applies)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"clean.langid.min_score must be within [0, 1], got {self.min_score}")
        if not 0.0 < self.zh_min_han_share <= 1.0:
            raise ValueError(f"clean.langid.zh_min_han_share must be within (0, 1], got {self.zh_min_han_share}")
        if self.max_chars < 16:
            raise ValueError(f"clean.langid.max_chars must be >= 16, got {self.max_chars}")


def visit_features(data, nextmove, rowbase, output, scratch):
    """Features the automaton emits over the bytes ``data``: ``(ids in first-seen order,
    counts)``, i.e. ``Counter(ids)``'s keys and values.  ``scratch`` (zeros, one per feature)
    is left zeroed."""
    order = np.empty(len(data), np.intp)
    num = 0
    state = 0
    for byte in data:
        state = nextmove[rowbase[state] + byte]
        feature = output[state]
        if feature >= 0:
            if scratch[feature] == 0:
                order[num] = feature
                num += 1
            scratch[feature] += 1
    ids = order[:num].copy()
    counts = np.empty(num, np.float32)
    for i in range(num):
        counts[i] = scratch[ids[i]]
        scratch[ids[i]] = 0
    return ids, counts


@functools.lru_cache(maxsize=1)
def _compiled_visit():
    """:func:`visit_features` compiled on first use (numba loads only in processes that classify)."""
    import numba

    return numba.njit(cache=True, nogil=True)(visit_features)


class CompiledLanguageIdentifier(LanguageIdentifier):
    """py3langid's identifier with the automaton walk compiled (:func:`visit_features`);
    scores are bit-identical to the stock class."""

    def _arrays(self):
        if not hasattr(self, "_compiled"):
            # 32-bit tables halve the automaton's cache misses; the float16 weight table is
            # widened once (+28 MB) because ``float32 @ float16`` widens the gathered rows on
            # every call anyway, to the same float32 values
            self.nb_ptc = self.nb_ptc.astype(np.float32)
            nextmove = np.frombuffer(self.tk_nextmove, dtype=f"u{self.tk_nextmove.itemsize}")  # a view, not a copy (39 MB)
            self._compiled = (nextmove, np.asarray(self._rowbase, dtype=np.int32),
                              np.asarray(self.tk_output, dtype=np.int32), np.zeros(self.nb_ptc.shape[0], np.int32))
        return self._compiled

    def _raw_score(self, text):
        arrays = self._arrays()
        ids, counts = _compiled_visit()(np.frombuffer(text, np.uint8), *arrays)
        if len(ids):
            return np.log1p(counts) @ self.nb_ptc[ids] + self.nb_pc
        return np.full(len(self.nb_classes), 0.0 if self._norm_probs else RAW_FLOOR, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _identifier():
    return CompiledLanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def han_share(text: str) -> float:
    """Han characters / (Han characters + Latin letters); 0.0 for text with neither."""
    num_han = count_chars(_HAN_RUN, text)
    num_latin = count_chars(_LATIN_RUN, text)
    return num_han / (num_han + num_latin) if num_han + num_latin else 0.0


def identify(text: str, config: LangIdConfig = LangIdConfig()) -> tuple[str, float, str, float]:
    """``(lang, score, rule, han_share)`` for ``text`` (see the module docstring)."""
    head = text[: config.max_chars]
    share = han_share(head)
    lang, score = _identifier().classify(head)
    score = float(score)
    if share >= config.zh_min_han_share and not _KANA_HANGUL.search(head):
        return "zh", (score if lang == "zh" else 0.0), "script", share
    return lang, score, "classifier", share


def identify_language(doc: Document, config: LangIdConfig = LangIdConfig()) -> str | None:
    """Annotate ``doc.lang`` and ``meta.lang_score`` / ``lang_rule`` / ``han_share``; answer a
    drop reason (``lang_not_allowed``, ``low_lang_score``) or None."""
    if config.keep_given and doc.lang:
        lang, rule = doc.lang, "given"
        score = 1.0
    else:
        lang, score, rule, share = identify(doc.text, config)
        doc.lang = lang
        doc.meta.update(lang_score=round(score, 4), lang_rule=rule, han_share=round(share, 4))
    if config.allowed and lang not in config.allowed:
        return "lang_not_allowed"
    if rule == "classifier" and score < config.min_score:
        return "low_lang_score"
    return None
