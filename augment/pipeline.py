"""The augment stage as steps, and its per-method statistics.

:func:`build_pipeline` returns a :class:`etl.core.step.Pipeline` with one step per method in
``augment.methods``.  Each step takes batches of ``batch_docs`` documents, yields every input
document unchanged, and after each parent the variants it made (kept, or rejected by the
guard with ``changed_fact`` / ``too_similar`` / ``too_different``).  Variants are never
augmented again.

:class:`AugmentStats` counts, per method, variants made, kept and rejected by reason, which
fact kinds changed, the entity-swap kinds (``alias`` / ``counterfactual`` / ``non_graph``) of
kept and rejected variants and the masked-LM words left as they were, from the output records
alone, so the local and the Spark executor report the same numbers.

:data:`AUGMENT` declares the stage (``python -m augment``, ``spark-submit spark_jobs/augment_corpus.py``).
"""
from __future__ import annotations

import collections
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from augment.config import AugmentConfig
from etl.core.document import Document
from etl.core.stage import Stage
from etl.core.step import Pipeline, batch_step


def build_augmenters(config: AugmentConfig) -> list[Any]:
    """One augmenter per configured method, in order (the knowledge graph is loaded once)."""
    from augment.backtranslate import BackTranslationAugmenter
    from augment.entity_swap import EntitySwapAugmenter, load_graph
    from augment.mlm import MaskedLMAugmenter

    graph = load_graph(config.entity_swap)
    makers = {"back_translation": lambda: BackTranslationAugmenter(config, graph),
              "masked_lm": lambda: MaskedLMAugmenter(config, graph),
              "entity_swap": lambda: EntitySwapAugmenter(config, graph)}
    return [makers[m]() for m in config.methods]


def build_pipeline(config: AugmentConfig) -> Pipeline:
    """The augment pipeline (models load lazily, on the first batch that needs them).

    The augmenters record their own failures as rejected ``error_<Type>`` variants, so a
    failure never rejects the originals (``on_error=None``)."""
    return Pipeline([batch_step(a.name, a, config.batch_docs, on_error=None) for a in build_augmenters(config)], name="augment")


def _counter() -> collections.Counter:
    return collections.Counter()


@dataclass
class AugmentStats:
    """Per method: variants made, kept, rejected by reason; parents augmented; originals seen."""

    num_originals: int = 0
    made: collections.Counter = field(default_factory=_counter)
    kept: collections.Counter = field(default_factory=_counter)
    rejected: collections.Counter = field(default_factory=_counter)  # key: (method, reason)
    parents: dict[str, set] = field(default_factory=lambda: collections.defaultdict(set))
    """Parent ids seen in this partition (a parent's variants never leave its partition)."""
    parent_counts: collections.Counter = field(default_factory=_counter)
    similarity_sum: collections.Counter = field(default_factory=_counter)
    changed_facts: collections.Counter = field(default_factory=_counter)  # key: (method, fact kind)
    swap_kinds: collections.Counter = field(default_factory=_counter)  # key: (method, "kept" | "rejected", kind); swaps, not variants
    word_counts: collections.Counter = field(default_factory=_counter)  # key: (method, name): num_masked, num_changed, ...

    def add(self, doc: Document) -> None:
        lineage = doc.meta.get("augment")
        if not isinstance(lineage, dict):
            self.num_originals += 1
            return
        method = lineage.get("method", "?")
        self.made[method] += 1
        self.parents[method].add(lineage.get("parent_id"))
        if doc.dropped:
            self.rejected[(method, doc.drop_reason)] += 1
        else:
            self.kept[method] += 1
            self.similarity_sum[method] += float(lineage.get("guard", {}).get("similarity", 0.0))
        for kind in (lineage.get("guard") or {}).get("changed") or {}:
            self.changed_facts[(method, kind)] += 1
        params = lineage.get("params") or {}
        status = "rejected" if doc.dropped else "kept"
        for swap in params.get("swaps") or ():
            self.swap_kinds[(method, status, swap.get("kind", "?"))] += 1
        if "num_masked" in params:
            self.word_counts[(method, "num_masked")] += params["num_masked"]
            self.word_counts[(method, "num_changed")] += len(params.get("changes") or ())
            self.word_counts[(method, "num_not_interchangeable")] += params.get("num_not_interchangeable", 0)

    def add_all(self, docs: Iterable[Document]) -> AugmentStats:
        for doc in docs:
            self.add(doc)
        return self

    def merge(self, other: AugmentStats) -> AugmentStats:
        self.num_originals += other.num_originals
        for name in ("made", "kept", "rejected", "similarity_sum", "changed_facts", "swap_kinds", "word_counts"):
            getattr(self, name).update(getattr(other, name))
        self.parent_counts.update(other.parent_counts)
        self.parent_counts.update({m: len(ids) for m, ids in other.parents.items()})
        return self

    def to_dict(self) -> dict[str, Any]:
        methods = sorted(self.made)
        report = {}
        for m in methods:
            reasons = {r: n for (mm, r), n in sorted(self.rejected.items()) if mm == m}
            report[m] = {"parents": len(self.parents.get(m, ())) + self.parent_counts[m], "made": self.made[m], "kept": self.kept[m],
                         "rejected": sum(reasons.values()), "rejected_by_reason": reasons,
                         "changed_fact_by_kind": {k: n for (mm, k), n in sorted(self.changed_facts.items()) if mm == m},
                         "mean_kept_similarity": round(self.similarity_sum[m] / self.kept[m], 4) if self.kept[m] else None}
            swaps = {status: {k: n for (mm, st, k), n in sorted(self.swap_kinds.items()) if mm == m and st == status} for status in ("kept", "rejected")}
            if any(swaps.values()):
                report[m]["swap_kinds"] = swaps
            words = {name: n for (mm, name), n in sorted(self.word_counts.items()) if mm == m}
            if words:
                report[m]["words"] = words
        return {"augment": {"num_originals": self.num_originals, "by_method": report}}


def augment_factory(configs: Mapping[str, Any]) -> functools.partial:
    """The stage's pipeline factory from its loaded configs (picklable: workers and executors)."""
    return functools.partial(build_pipeline, configs["augment"])


AUGMENT = Stage(
    name="augment",
    description="Augment documents: back-translation, masked-LM substitution, entity swap (originals kept).",
    sections=("augment",),
    pipeline=augment_factory,
    counter=AugmentStats,
    batch_docs=lambda configs: configs["augment"].batch_docs,
)
