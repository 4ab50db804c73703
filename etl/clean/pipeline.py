"""The cleaning stage: configuration, the step pipeline, and the local command line.

Steps, in order (each a pure function under the step contract, :mod:`etl.core.step`)::

    html        HTML records -> main text                          html_no_text
    dialogue    turns / instruction -> text + segments + tree      dialogue_* / instruction_*
    normalize   NFKC, invisible chars, whitespace, unwrap, t2s     empty_after_normalize
    chars       remove characters outside the allowed classes      invalid_chars
    langid      lang annotation + language filter                  lang_not_allowed, low_lang_score
    dedup_lines repeated lines/sentences, boilerplate lines        (no drop; counts in meta)
    quality     Gopher quality + repetition, C4, CJK rules         gopher_*, dup_*, top_*, c4_*, cjk_*
    pii         e-mail, phone, ID card, IP masking                 (no drop; counts in meta)

``meta.chars_in`` (the record's characters before cleaning, kept on re-cleaning) is set by
the first step so the statistics report characters in and out.

:data:`CLEAN` declares the stage; the executors run it (the same steps either way)::

    python -m etl.clean --input data/sample --output runs/clean [--params params.yaml] [--workers 2]
    spark-submit spark_jobs/clean.py --input data/sample --output runs/clean [--params params.yaml]
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from etl.clean.charfilter import CharFilterConfig, filter_chars
from etl.clean.html import HtmlConfig, strip_html
from etl.clean.langid import LangIdConfig, identify_language
from etl.clean.normalize import NormalizeConfig, normalize_text, unwrap_lines
from etl.clean.pii import PiiConfig, mask_pii
from etl.clean.quality import QualityConfig, check_quality
from etl.clean.repetition import RepetitionRemovalConfig, remove_repetition
from etl.clean.tokenize import TokenizerConfig
from etl.core.document import Document
from etl.core.stage import Stage
from etl.core.step import ON_ERROR_CHOICES, FunctionStep, Pipeline, filter_step, map_step
from etl.io.dialogue import DialogueConfig, chat_turns, flatten_document
from etl.runner import run_stage, warm

logger = logging.getLogger(__name__)
STAGE = "clean"


@dataclass(frozen=True, kw_only=True)
class CleanConfig:
    """The ``clean:`` section of params.yaml (every sub-section documented in its class)."""

    on_error: str = "skip"
    """Per-record failures: ``skip`` rejects the record as ``error_<Type>``, ``raise`` stops."""
    html: HtmlConfig = field(default_factory=HtmlConfig)
    """HTML records (``meta.format`` html, ``.html`` files, text that starts like HTML) -> main text with line breaks."""
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    """Dialogue turns and instruction records -> text, ``meta.segments`` (prompt/response spans) and the ``meta.dialogue`` tree."""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """Unicode NFKC, control characters, whitespace, hard-wrap unwrapping, optional Traditional -> Simplified."""
    chars: CharFilterConfig = field(default_factory=CharFilterConfig)
    """Characters outside the allowed classes: removed, and the document rejected as ``invalid_chars`` above a fraction."""
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    """Language identification (py3langid plus a mixed-script rule for Chinese pages quoting English)."""
    dedup_lines: RepetitionRemovalConfig = field(default_factory=RepetitionRemovalConfig)
    """Repeated lines and sentences and boilerplate lines removed inside one document."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Document quality rules: Gopher quality and repetition (Rae et al. 2021, Table A1), C4 (Raffel et al. 2020), CJK counterparts."""
    pii: PiiConfig = field(default_factory=PiiConfig)
    """Masking of e-mail addresses, phone numbers, Chinese ID numbers and IP addresses in kept text."""

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"clean.on_error must be one of {list(ON_ERROR_CHOICES)}, got {self.on_error!r}")


# ------------------------------------------------------------------------------ steps


def _chars_in(doc: Document) -> int:
    if doc.text:
        return len(doc.text)
    turns, _, reason, _ = chat_turns(doc.meta)
    if reason is None:
        return sum(len(t.get("text") or "") for t in turns if isinstance(t, dict) and isinstance(t.get("text"), str))
    return sum(len(str(doc.meta.get(k) or "")) for k in ("instruction", "input", "output"))


def html_step(config: CleanConfig) -> FunctionStep:
    """Record ``meta.chars_in``, then extract HTML records' text (``html_no_text``)."""

    def run(doc: Document) -> str | None:
        doc.meta.setdefault("chars_in", _chars_in(doc))
        return strip_html(doc, config.html)

    return filter_step("html", run, config.on_error)


def _turn_cleaner(config: CleanConfig):
    def clean_turn(text: str) -> str:
        text = normalize_text(text, config.normalize)
        if config.chars.remove:
            text = filter_chars(text, config.chars)[0]
        if config.pii.enabled:
            text = mask_pii(text, config.pii)[0]
        return text

    return clean_turn


def dialogue_step(config: CleanConfig) -> FunctionStep:
    """Flatten dialogue and instruction records (turns cleaned before flattening)."""
    clean_turn = _turn_cleaner(config)
    return filter_step("dialogue", lambda doc: flatten_document(doc, config.dialogue, clean_turn), config.on_error)


def normalize_step(config: CleanConfig) -> FunctionStep:
    """Normalise text (documents with segments were normalised turn by turn)."""

    def run(doc: Document) -> str | None:
        if "segments" not in doc.meta:
            doc.text = normalize_text(doc.text, config.normalize)
        return None if doc.text else "empty_after_normalize"

    return filter_step("normalize", run, config.on_error)


def chars_step(config: CleanConfig) -> FunctionStep:
    """Remove invalid characters; drop documents with too many (``invalid_chars``)."""

    def run(doc: Document) -> str | None:
        new_text, num_invalid = filter_chars(doc.text, config.chars)
        if num_invalid:
            doc.meta["num_invalid_chars"] = doc.meta.get("num_invalid_chars", 0) + num_invalid
        if num_invalid / max(1, len(doc.text)) > config.chars.max_invalid_frac:
            return "invalid_chars"
        if config.chars.remove and num_invalid and "segments" not in doc.meta:
            doc.text = new_text
        return None if doc.text else "empty_after_chars"

    return filter_step("chars", run, config.on_error)


def langid_step(config: CleanConfig) -> FunctionStep:
    return filter_step("langid", lambda doc: identify_language(doc, config.langid), config.on_error)


def dedup_lines_step(config: CleanConfig) -> FunctionStep:
    """Remove repeated lines and sentences and boilerplate lines inside each document."""

    def run(doc: Document) -> str | None:
        if not config.dedup_lines.enabled or "segments" in doc.meta:
            return None
        doc.text, counts = remove_repetition(doc.text, config.dedup_lines)
        if any(counts.values()) and config.normalize.unwrap_lines:
            # removing a line can make two wrapped lines adjacent; re-unwrap so that cleaning
            # clean output changes nothing (idempotence)
            doc.text = unwrap_lines(doc.text, config.normalize.unwrap_min_chars)
        for key, num in counts.items():
            if num:
                doc.meta[key] = doc.meta.get(key, 0) + num
        return None if doc.text else "empty_after_dedup_lines"

    return filter_step("dedup_lines", run, config.on_error)


def quality_step(config: CleanConfig, tokenizer: TokenizerConfig) -> FunctionStep:
    return filter_step("quality", lambda doc: check_quality(doc, config.quality, tokenizer), config.on_error)


def pii_step(config: CleanConfig) -> FunctionStep:
    """Mask PII (documents with segments were masked turn by turn)."""

    def run(doc: Document) -> Document:
        if config.pii.enabled and "segments" not in doc.meta:
            doc.text, counts = mask_pii(doc.text, config.pii)
            if counts:
                merged = dict(doc.meta.get("pii_counts") or {})
                for kind, num in counts.items():
                    merged[kind] = merged.get(kind, 0) + num
                doc.meta["pii_counts"] = merged
        return doc

    return map_step("pii", run, config.on_error)


def build_clean_pipeline(config: CleanConfig | None = None, tokenizer_config: TokenizerConfig | None = None) -> Pipeline:
    """The cleaning pipeline (see the module docstring); reused by Spark, Kafka ingest and DVC."""
    config = config or CleanConfig()
    tokenizer_config = tokenizer_config or TokenizerConfig()
    return Pipeline([
        html_step(config), dialogue_step(config), normalize_step(config), chars_step(config),
        langid_step(config), dedup_lines_step(config), quality_step(config, tokenizer_config), pii_step(config),
    ], name=STAGE)


class CleanPipelineFactory:
    """A picklable factory (for worker processes and Spark executors)."""

    def __init__(self, config: CleanConfig, tokenizer_config: TokenizerConfig):
        self.config = config
        self.tokenizer_config = tokenizer_config

    def __call__(self) -> Pipeline:
        return build_clean_pipeline(self.config, self.tokenizer_config)


def clean_factory(configs: Mapping[str, Any]) -> CleanPipelineFactory:
    """The stage's pipeline factory from its loaded configs (``clean``, ``tokenizer``)."""
    return CleanPipelineFactory(configs["clean"], configs["tokenizer"])


def warm_up_documents() -> list[Document]:
    """An English and a Chinese paragraph that take every cleaning step's main path (language
    identification, the treebank and CJK rules, n-gram counting), for the workers' warm-up."""
    english = ("The river rose after three days of rain, and the town's volunteers filled sandbags along the bank. "
               "By Friday the water had reached the old bridge, but the houses on the hill stayed dry. "
               "The school opened its hall to the families from the lower streets, and the bakery sent bread every morning. "
               "When the rain stopped, the council counted the damage and asked the state for help with the roads. "
               "Most shops were open again within a week, and the market returned to the square that Saturday.\n")
    chinese = ("连续三天的降雨使河水上涨，镇上的志愿者在河岸边装填沙袋。到了星期五，河水已经漫到老桥，但山坡上的房屋安然无恙。"
               "学校把礼堂开放给低洼街道的住户，面包店每天早上送来面包。雨停以后，议会清点了损失，并向省里申请修路的资金。"
               "一周之内大多数商店重新开门，星期六集市也回到了广场。\n")
    return [Document(id="warm-up-en", text=english), Document(id="warm-up-zh", text=chinese)]


def warm_worker() -> None:
    """Run by the Spark Python worker daemon (``spark_jobs.worker_daemon``) before it forks:
    the default pipeline over :func:`warm_up_documents`, so language identification's model,
    the segmenter's dictionary and the compiled kernels (about 2.5 s) load once for all of
    the stage's workers rather than in each."""
    warm(build_clean_pipeline(), warm_up_documents())


CLEAN = Stage(
    name=STAGE,
    description="Clean raw Chinese/English text: normalise, strip HTML, filter characters, identify language, "
                "apply Gopher/C4/CJK quality rules, mask PII, flatten dialogues.",
    sections=("clean", "tokenizer"),
    pipeline=clean_factory,
)


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m etl.clean``: run the cleaning stage locally; returns the statistics report."""
    return run_stage(CLEAN, argv)
