"""The linear n-gram kind: fastText's features (word n-grams and character n-grams inside
words, hashed) with a logistic regression, in scikit-learn.

Words come from the project's shared tokenizer (:mod:`etl.clean.tokenize`: jieba for Chinese,
NLTK for the rest), lower-cased, each document tokenized once.  Its features are two blocks:

* words: the word 1..``word_max``-grams;
* characters: the ``char_min``..``char_max``-grams of each whitespace-separated chunk of the
  lower-cased text padded with spaces (``char_scope: text``, as scikit-learn's ``char_wb``; in
  Chinese they cross jieba's word boundaries), or of each word with ``<``/``>`` marking its
  ends (``char_scope: word``, fastText's subword scheme).

Each block is hashed into the same ``features`` buckets (scikit-learn's ``FeatureHasher``:
signed murmur3, counts) and L2-normalised on its own, then the character block is scaled by
``char_weight`` and added: a word yields about ten character n-grams, so one normalisation over
both would leave the word n-grams (which carry word order, what a shuffled or spun text breaks)
a small share of the norm. Models trained before this (no ``block_norm`` in their manifest)
are scored with their one-block features, as trained.

The weights are saved as their non-zero entries (``weights.npz``), not as a pickle, so a model
loads in any scikit-learn version and scoring is a sparse dot product: one document's score
never depends on the others in its batch.
"""
from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from etl.clean.tokenize import TokenizerConfig, tokenize

WEIGHTS = "weights.npz"


def feature_blocks(text: str, settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The word and the character n-gram features of ``text`` (before hashing)."""
    tokens = tokenize(text[: settings["max_chars"]], _tokenizer(settings.get("english", "wordpunct")))
    words = list(tokens)
    for n in range(2, settings["word_max"] + 1):
        words.extend("\x01".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    chars: list[str] = []
    lo, hi = settings["char_min"], settings["char_max"]
    if settings.get("char_scope", "word") == "text":
        pieces = [f" {chunk} " for chunk in text[: settings["max_chars"]].lower().split()]
    else:
        pieces = [f"<{tok}>" for tok in tokens]
    for piece in pieces:
        for n in range(lo, min(hi, len(piece)) + 1):
            chars.extend("\x02" + piece[i:i + n] for i in range(len(piece) - n + 1))
    return words, chars


def feature_strings(text: str, settings: dict[str, Any]) -> list[str]:
    """All n-gram features of ``text`` in one list (the one-block scheme of older models)."""
    words, chars = feature_blocks(text, settings)
    return words + chars


@functools.lru_cache(maxsize=4)
def _tokenizer(english: str) -> TokenizerConfig:
    return TokenizerConfig(lowercase=True, english=english)


def ngram_settings(train) -> dict[str, Any]:
    """The manifest settings of an n-gram model trained with ``train`` (a QualityTrainConfig)."""
    return {"features": train.ngram_features, "word_max": train.ngram_word_max, "char_min": train.ngram_char_min,
            "char_max": train.ngram_char_max, "max_chars": train.max_chars, "english": "wordpunct",
            "block_norm": True, "char_weight": train.ngram_char_weight, "char_scope": train.ngram_char_scope}



def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` with fixed member timestamps, so the same weights give the same
    bytes (numpy stamps each member with the current time, which changes a DVC output's hash on
    every rerun). ``np.load`` reads it as any ``.npz``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())

class _Analyzer:
    """A picklable analyzer for HashingVectorizer."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def __call__(self, text: str) -> list[str]:
        return feature_strings(text, self.settings)


class BlockVectorizer:
    """Word and character blocks hashed, each L2-normalised, added with ``char_weight``
    (stateless: nothing to save)."""

    def __init__(self, settings: dict[str, Any]):
        from sklearn.feature_extraction import FeatureHasher

        self.settings = settings
        self.hasher = FeatureHasher(n_features=settings["features"], input_type="string", alternate_sign=True)

    def transform(self, texts: Sequence[str]):
        from sklearn.preprocessing import normalize

        blocks = [feature_blocks(text, self.settings) for text in texts]
        words = normalize(self.hasher.transform(b[0] for b in blocks))
        chars = normalize(self.hasher.transform(b[1] for b in blocks))
        return (words + float(self.settings["char_weight"]) * chars).tocsr()


def vectorizer(settings: dict[str, Any]):
    """The hashing vectorizer of ``settings`` (stateless: nothing to save): two normalised
    blocks, or one for a model trained before ``block_norm``."""
    if settings.get("block_norm"):
        return BlockVectorizer(settings)
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer=_Analyzer(settings), n_features=settings["features"], alternate_sign=True, norm="l2")


class NgramClassifier:
    """Hashed n-grams -> logistic regression (see the module docstring)."""

    kind = "ngram"

    def __init__(self, settings: dict[str, Any], weights: np.ndarray, bias: float):
        self.settings = dict(settings)
        self.weights = weights
        self.bias = float(bias)
        self._vectorizer = vectorizer(self.settings)

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], train) -> NgramClassifier:
        """Fit on ``texts`` with ``labels`` (1 = high quality) using ``train`` (QualityTrainConfig)."""
        from sklearn.linear_model import LogisticRegression

        settings = ngram_settings(train)
        features = vectorizer(settings).transform(texts)
        model = LogisticRegression(C=train.ngram_c, solver="liblinear", class_weight="balanced",
                                   max_iter=1000, random_state=train.seed)
        model.fit(features, np.asarray(labels))
        return cls(settings, model.coef_[0].astype(np.float64), float(model.intercept_[0]))

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """The linear model's logits."""
        if not texts:
            return np.zeros(0)
        return self._vectorizer.transform(list(texts)) @ self.weights + self.bias

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(texts)))

    def save(self, directory: Path) -> None:
        nonzero = np.flatnonzero(self.weights)
        write_npz(directory / WEIGHTS, index=nonzero.astype(np.int64), value=self.weights[nonzero],
                  bias=np.array([self.bias]), size=np.array([self.weights.size]))

    @classmethod
    def load(cls, directory: Path, settings: dict[str, Any], device: str = "auto", dtype: str = "auto") -> NgramClassifier:
        with np.load(directory / WEIGHTS) as data:
            size = int(data["size"][0])
            if size != settings["features"]:
                raise ValueError(f"{WEIGHTS} has {size} weights, the manifest says {settings['features']}")
            weights = np.zeros(size)
            weights[data["index"]] = data["value"]
            return cls(settings, weights, float(data["bias"][0]))
