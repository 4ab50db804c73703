"""The fastText kind: the same features as :mod:`.ngram` (word n-grams, character n-grams inside
words) learnt by the fastText library (``pip install fasttext-numpy2-wheel``).

fastText splits its input on whitespace, so texts are first cut into words by the shared
tokenizer (jieba for Chinese, which has no spaces) and joined with single spaces; the saved
``model.bin`` is a plain fastText model with labels ``__label__hq`` and ``__label__lq``, the
file DataTrove's ``FastTextClassifierFilter`` loads (feed it text tokenised the same way).
Training runs on one thread with a fixed seed, so it is reproducible.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from etl.clean.tokenize import TokenizerConfig, tokenize

MODEL_FILE = "model.bin"
#: Vector size: 16 keeps model.bin at 64 MiB for 2^20 buckets (fastText's default 100 would be 400 MiB);
#: a binary quality label needs few dimensions (fastText's own language-id model uses 16).
DIM = 16
_TOKENIZER = TokenizerConfig(lowercase=True, english="wordpunct")


def fasttext_line(text: str, max_chars: int) -> str:
    """``text`` as fastText reads it: shared-tokenizer words joined by single spaces, one line."""
    return " ".join(tok for tok in tokenize(text[:max_chars], _TOKENIZER) if not tok.isspace())


class FastTextClassifier:
    """A fastText supervised model over shared-tokenizer words (see the module docstring)."""

    kind = "fasttext"

    def __init__(self, settings: dict[str, Any], model):
        self.settings = dict(settings)
        self.model = model
        labels = list(model.get_labels())
        if sorted(labels) != ["__label__hq", "__label__lq"]:
            raise ValueError(f"{MODEL_FILE} has labels {labels}, expected __label__hq and __label__lq")

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], train) -> FastTextClassifier:
        import fasttext

        settings = {"max_chars": train.max_chars, "word_max": train.ngram_word_max, "char_min": train.ngram_char_min,
                    "char_max": train.ngram_char_max, "features": train.ngram_features, "dim": DIM}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "train.txt")
            with open(path, "w", encoding="utf-8") as handle:
                for text, label in zip(texts, labels):
                    handle.write(f"__label__{'hq' if label else 'lq'} {fasttext_line(text, train.max_chars)}\n")
            model = fasttext.train_supervised(
                path, lr=train.fasttext_lr, epoch=train.fasttext_epochs, wordNgrams=train.ngram_word_max,
                minn=train.ngram_char_min, maxn=train.ngram_char_max, bucket=train.ngram_features, dim=DIM,
                thread=1, seed=train.seed, verbose=0)
        return cls(settings, model)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        lines = [fasttext_line(t, self.settings["max_chars"]) for t in texts]
        labels, probs = self.model.predict(lines, k=2)
        out = np.empty(len(lines))
        for i, (names, values) in enumerate(zip(labels, probs)):
            table = dict(zip(names, values))
            # fastText's softmax can round a probability to exactly 0 and leave the label out
            out[i] = table["__label__hq"] if "__label__hq" in table else 1.0 - table.get("__label__lq", 0.0)
        return np.clip(out, 0.0, 1.0)

    def save(self, directory: Path) -> None:
        self.model.save_model(str(directory / MODEL_FILE))

    @classmethod
    def load(cls, directory: Path, settings: dict[str, Any], device: str = "auto", dtype: str = "auto") -> FastTextClassifier:
        import fasttext

        path = directory / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{MODEL_FILE} is missing")
        fasttext.FastText.eprint = lambda *args, **kwargs: None  # its load warning about load_model is noise
        return cls(settings, fasttext.load_model(str(path)))
