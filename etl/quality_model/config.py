"""The ``quality_model:`` section of params.yaml: the filter stage and the train command."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from etl.core.config import FrozenDict
from etl.core.step import ON_ERROR_CHOICES

KINDS = ("ngram", "fasttext", "bert")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CHAR_SCOPES = ("text", "word")


def _check_unit(where: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} must be in [0, 1], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class QualityTrainConfig:
    """``quality_model.train``: how ``python -m etl.quality_model train`` fits a classifier."""

    kind: str = "ngram"
    """``ngram`` (hashed word + character n-grams, logistic regression), ``fasttext`` (the
    fastText library on the same tokens) or ``bert`` (a fine-tuned sequence classifier)."""
    holdout_frac: float = 0.2
    """Share of the labelled documents held out for the figures, chosen by a hash of the id
    (the split does not depend on file order)."""
    seed: int = 0
    """Seed of the held-out split, of the optimiser and of the BERT classification head."""
    max_chars: int = 4000
    """Characters of each document the classifier reads (its beginning); bounds the cost of
    long documents. Stored in the manifest, so scoring uses the training value."""
    ngram_features: int = 2**20
    """ngram: hashed feature space (2^20 as in scikit-learn's HashingVectorizer default)."""
    ngram_word_max: int = 2
    """ngram / fasttext: longest word n-gram (fastText's supervised tutorial uses bigrams)."""
    ngram_char_min: int = 2
    """ngram / fasttext: shortest character n-gram inside a word."""
    ngram_char_max: int = 4
    """ngram / fasttext: longest character n-gram inside a word (Chinese words are 1-4 characters)."""
    ngram_char_scope: str = "text"
    """ngram: where character n-grams are taken: ``text`` (each whitespace-separated chunk of the
    text, padded with spaces, as scikit-learn's ``char_wb``: for Chinese they cross the word
    boundaries jieba drew, which is where shuffled or spun text looks wrong) or ``word`` (inside
    each jieba/NLTK word, fastText's subword scheme). Held-out AUC on the benchmark set: 0.97
    (``text``) against 0.96 (``word``), ``docs/quality_model.md``."""
    ngram_char_weight: float = 1.0
    """ngram: weight of the character n-gram block against the word n-gram block. Each block is
    L2-normalised on its own, so a document's many character n-grams do not drown its word
    n-grams (one normalisation over both: AUC 0.92). 0 drops them."""
    ngram_c: float = 4.0
    """ngram: inverse L2 regularisation strength of the logistic regression (scikit-learn's ``C``)."""
    fasttext_epochs: int = 25
    """fasttext: training epochs (fastText's supervised tutorial uses 25 for small sets)."""
    fasttext_lr: float = 0.5
    """fasttext: learning rate (the tutorial's 0.5 to 1.0)."""
    bert_base: str = "bert-base-chinese"
    """bert: the model fine-tuned: a local directory or a hub id (it has a Chinese and an English vocabulary)."""
    bert_epochs: int = 3
    """bert: fine-tuning epochs (BERT's paper uses 2 to 4)."""
    bert_lr: float = 5e-5
    """bert: AdamW learning rate (BERT's paper: 5e-5, 3e-5 or 2e-5)."""
    bert_batch_size: int = 16
    """bert: documents per optimiser step."""
    bert_max_tokens: int = 256
    """bert: tokens per document (longer ones are truncated); stored in the manifest."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"quality_model.train.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not 0.0 < self.holdout_frac < 1.0:
            raise ValueError(f"quality_model.train.holdout_frac must be in (0, 1), got {self.holdout_frac!r}")
        for name in ("max_chars", "ngram_features", "ngram_word_max", "fasttext_epochs", "bert_epochs",
                     "bert_batch_size", "bert_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"quality_model.train.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.ngram_char_scope not in CHAR_SCOPES:
            raise ValueError(f"quality_model.train.ngram_char_scope must be one of {list(CHAR_SCOPES)}, got {self.ngram_char_scope!r}")
        if self.ngram_char_weight < 0:
            raise ValueError(f"quality_model.train.ngram_char_weight must be >= 0, got {self.ngram_char_weight!r}")
        if not 1 <= self.ngram_char_min <= self.ngram_char_max:
            raise ValueError(f"quality_model.train: need 1 <= ngram_char_min <= ngram_char_max, got "
                             f"{self.ngram_char_min} and {self.ngram_char_max}")
        for name in ("ngram_c", "fasttext_lr", "bert_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"quality_model.train.{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True, kw_only=True)
class QualityModelConfig:
    """The ``quality_model:`` section: the model-based quality filter stage and its training."""

    enabled: bool = True
    """Score and filter; ``false`` passes every record through unchanged (the DVC stage stays
    in the pipeline and is switched by this param)."""
    model: str = "models/quality"
    """Model directory written by ``python -m etl.quality_model train`` (``--model`` overrides)."""
    threshold: float = 0.7
    """Keep documents whose quality score (the classifier's probability of high quality) is at
    least this; the guide's BERT filter uses a confidence of 0.7. ``--threshold`` overrides."""
    domain_thresholds: Mapping[str, float] = field(default_factory=lambda: FrozenDict())
    """Per-domain thresholds over ``threshold``, e.g. ``{expert: 0.5, general: 0.8}``."""
    batch_size: int = 64
    """Documents scored per call (BERT batches are re-cut by length inside, padding-aware)."""
    device: str = "auto"
    """bert: ``auto`` (a GPU when visible), ``cpu`` or ``cuda``."""
    dtype: str = "auto"
    """bert: ``auto`` is bf16 on a GPU that has it, fp32 on CPU; or ``float32``/``bfloat16``/``float16``."""
    on_error: str = "skip"
    """Per-record failures: ``skip`` rejects the record as ``error_<Type>``, ``raise`` stops."""
    train: QualityTrainConfig = field(default_factory=QualityTrainConfig)

    def __post_init__(self) -> None:
        _check_unit("quality_model.threshold", self.threshold)
        for domain, value in self.domain_thresholds.items():
            _check_unit(f"quality_model.domain_thresholds.{domain}", value)
        if self.batch_size < 1:
            raise ValueError(f"quality_model.batch_size must be >= 1, got {self.batch_size!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"quality_model.device must be one of {list(DEVICES)} or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"quality_model.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"quality_model.on_error must be one of {list(ON_ERROR_CHOICES)}, got {self.on_error!r}")
        if not self.model:
            raise ValueError("quality_model.model must name a model directory")

    def threshold_for(self, domain: str) -> float:
        """The threshold of ``domain`` (its override, else :attr:`threshold`)."""
        return self.domain_thresholds.get(domain, self.threshold)
