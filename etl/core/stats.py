"""Stage statistics computed from a stage's output records.

Every runner (local, Spark, Kafka) feeds the same :class:`StageStats` with the documents a
stage emitted (kept and rejected), so the numbers have one definition everywhere.  Spark
builds one per partition and merges them; the local runner builds one as it writes.
"""
from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.core.atomic import write_json
from etl.core.document import Document

#: When this process imported jinglian's statistics (within a second of a stage's start).
_STARTED_S = time.time()
#: Report keys that differ on every run (wall times).  They go to ``timing.json``, which DVC
#: does not track, so ``stats.json`` is byte-identical for the same input and params and a
#: forced rerun leaves dvc.lock unchanged.
VOLATILE_KEYS = ("elapsed_s", "step_wall_s")
#: The report key of the wall time of each executor step, in seconds (``{"read": 3.2, "pipeline and write": 41.0}``).
STEP_WALL_KEY = "step_wall_s"


def _counter() -> collections.Counter:
    return collections.Counter()


@dataclass
class StageStats:
    """Counts per step and reason, characters in and out, per language and domain."""

    num_in: int = 0
    num_kept: int = 0
    num_rejected: int = 0
    chars_in: int = 0
    chars_out: int = 0
    dropped: collections.Counter = field(default_factory=_counter)  # key: (step, reason)
    kept_by_lang: collections.Counter = field(default_factory=_counter)
    kept_chars_by_lang: collections.Counter = field(default_factory=_counter)
    in_by_domain: collections.Counter = field(default_factory=_counter)
    kept_by_domain: collections.Counter = field(default_factory=_counter)
    kept_chars_by_domain: collections.Counter = field(default_factory=_counter)

    def add(self, doc: Document) -> None:
        """Count one output document (kept or rejected)."""
        n_chars = len(doc.text)
        self.num_in += 1
        self.chars_in += int(doc.meta.get("chars_in", n_chars))
        self.in_by_domain[doc.domain] += 1
        if doc.dropped:
            self.num_rejected += 1
            self.dropped[(doc.meta.get("drop_step", "?"), doc.drop_reason)] += 1
            return
        self.num_kept += 1
        self.chars_out += n_chars
        lang = doc.lang or "und"
        self.kept_by_lang[lang] += 1
        self.kept_chars_by_lang[lang] += n_chars
        self.kept_by_domain[doc.domain] += 1
        self.kept_chars_by_domain[doc.domain] += n_chars

    def add_all(self, docs: Iterable[Document]) -> StageStats:
        for doc in docs:
            self.add(doc)
        return self

    def merge(self, other: StageStats) -> StageStats:
        """Add ``other`` into ``self`` (associative and commutative, for Spark's reduce)."""
        for name in ("num_in", "num_kept", "num_rejected", "chars_in", "chars_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("dropped", "kept_by_lang", "kept_chars_by_lang", "in_by_domain", "kept_by_domain", "kept_chars_by_domain"):
            getattr(self, name).update(getattr(other, name))
        return self

    def to_dict(self, step_names: Sequence[str] = ()) -> dict[str, Any]:
        """A JSON-ready report; ``step_names`` (in pipeline order) adds per-step in/out counts."""
        by_reason: dict[str, int] = collections.Counter()
        by_step: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (step, reason), n in sorted(self.dropped.items()):
            by_reason[reason] += n
            by_step[step][reason] = n
        report: dict[str, Any] = {
            "num_in": self.num_in,
            "num_kept": self.num_kept,
            "num_rejected": self.num_rejected,
            "chars_in": self.chars_in,
            "chars_out": self.chars_out,
            "drop_reasons": dict(sorted(by_reason.items())),
            "dropped_by_step": {k: dict(v) for k, v in sorted(by_step.items())},
            "kept_by_lang": {k: {"docs": v, "chars": self.kept_chars_by_lang[k]} for k, v in sorted(self.kept_by_lang.items())},
            "by_domain": {
                d: {"in": n, "kept": self.kept_by_domain[d], "kept_chars": self.kept_chars_by_domain[d]}
                for d, n in sorted(self.in_by_domain.items())
            },
        }
        if step_names:
            report["steps"] = self._per_step(step_names, by_step)
        return report

    def _per_step(self, step_names: Sequence[str], by_step: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
        remaining = self.num_in
        rows = []
        for name in step_names:
            dropped = sum(by_step.get(name, {}).values())
            rows.append({"step": name, "in": remaining, "dropped": dropped, "out": remaining - dropped})
            remaining -= dropped
        return rows


def headline_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers ``dvc metrics show`` prints for a stage (the details are in stats.json)."""
    num_in = int(report.get("num_in", 0))
    return {"docs_in": num_in, "docs_kept": int(report.get("num_kept", 0)), "docs_rejected": int(report.get("num_rejected", 0)),
            "kept_share": round(int(report.get("num_kept", 0)) / num_in, 4) if num_in else 0.0}


def stage_report_files(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, content)`` of a stage's reports, in writing order: ``timing.json`` (the
    wall times, and ``wall_s``, seconds since the process started), ``metrics.json``
    (:func:`headline_metrics`), and last ``stats.json`` (the report less its wall times), the
    stage's completion mark."""
    timing = {key: report[key] for key in VOLATILE_KEYS if key in report}
    timing["wall_s"] = round(time.time() - _STARTED_S, 3)
    return [("timing.json", timing), ("metrics.json", headline_metrics(report)),
            ("stats.json", {k: v for k, v in report.items() if k not in VOLATILE_KEYS})]


def write_stage_reports(directory: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write a stage's reports (:func:`stage_report_files`) into a local directory, each
    atomically; stats.json last, as the stage's completion mark."""
    for name, content in stage_report_files(report):
        write_json(Path(directory) / name, content)
