"""The stage contract: what a stage does, declared once; executors decide where it runs.

A :class:`Stage` names its params sections, its per-document pipeline factory, its
whole-corpus operation (a local implementation, and a Spark one named by a ``module:function``
string so that nothing outside ``spark_jobs/`` imports pyspark), its outputs and its own
command-line flags.  Two executors run any stage with the same flags, the same config
loading, the same statistics and the same summary line:

* the local executor, :func:`etl.runner.run_stage` (``python -m etl.clean``, ``python -m augment``);
* the Spark executor, ``spark_jobs.executor.run_stage`` (``spark-submit spark_jobs/clean.py``).

Everything both executors share lives here: :func:`stage_parser` (the flags),
:func:`resolve_run` (config loading and the ``--on-error`` override), :func:`base_stats`
(what every ``stats.json`` records besides the counts) and :func:`summary_line`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from etl.core.cli import ArgumentParser, add_io_args
from etl.core.config import FrozenDict, config_to_dict, load_params, load_section, params_hash
from etl.core.document import Document
from etl.core.step import Pipeline

#: What every stage writes (atomically, ``stats.json`` last).
STAGE_OUTPUTS = ("kept/", "rejected/", "stats.json")
EXECUTORS = ("local", "spark")

PipelineFactory = Callable[[], Pipeline]


class CorpusCounter(Protocol):
    """Extra per-document statistics a stage adds to ``stats.json`` (e.g. augmentation counts):
    counted as documents stream past (local) or per partition and merged (Spark)."""

    def add(self, doc: Document) -> None: ...

    def merge(self, other: Any) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StageRun:
    """One run of a stage: the parsed flags, the loaded configs and the executor's name."""

    stage: Stage
    args: argparse.Namespace
    configs: dict[str, Any]
    runner: str
    params: dict[str, Any] = field(default_factory=dict)
    """The whole params file (validated), for a stage that records a raw section."""
    params_hash: str = ""
    """Hash of the stage's own section as the user gave it (params file and flags), taken
    before :attr:`Stage.check` resolves anything machine-specific (an absolute model path), so
    the same params give the same ``stats.json`` in any checkout."""

    @property
    def config(self) -> Any:
        """The stage's own params section (the first of :attr:`Stage.sections`)."""
        return self.configs[self.stage.sections[0]]

    @property
    def reader(self) -> Any:
        """The ``read:`` section (every stage reads its inputs with it)."""
        return self.configs["read"]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, declared once (see the module docstring)."""

    name: str
    """Stage name: the summary line's tag, the Spark application name, ``stats.json``'s ``stage``."""
    description: str
    """One line for ``--help``."""
    sections: tuple[str, ...]
    """Params sections the stage reads, its own first (``read`` is always loaded too)."""
    pipeline: Callable[[Mapping[str, Any]], PipelineFactory] | None = None
    """The per-document pipeline: from the loaded configs (section -> config), a picklable
    factory (the pipeline is built once per worker or executor process)."""
    corpus: Callable[[Iterable[Document], StageRun], tuple[Iterable[Document], dict[str, Any]]] | None = None
    """The local whole-corpus operation: all records in, all records (kept and rejected) and
    its ``stats.json`` additions out."""
    spark_corpus: str | None = None
    """``module:function`` of the Spark whole-corpus operation (in ``spark_jobs/``), called as
    ``function(spark, run)``; see ``spark_jobs.executor``."""
    step_names: Callable[[Mapping[str, Any]], list[str]] | None = None
    """The step names of ``stats.json``'s per-step table (default: the pipeline's)."""
    add_flags: Callable[[argparse.ArgumentParser], None] | None = None
    """The stage's own flags, beyond the shared ones."""
    check: Callable[[StageRun], None] | None = None
    """Validates the stage's own flags and configs before any work (before Spark starts):
    raise :class:`etl.core.errors.JinglianError` with one line. It may also resolve what the
    workers need in ``run.configs`` (a relative model path made absolute); the params hash is
    taken before."""
    apply_flags: Callable[[argparse.Namespace, dict[str, Any]], dict[str, Any]] | None = None
    """Applies the stage's own flags over its loaded configs (``--model``, ``--threshold``);
    returns the configs (checks and path resolution belong in :attr:`check`)."""
    counter: Callable[[], CorpusCounter] | None = None
    """Extra statistics counted over the output records (``to_dict`` merged into ``stats.json``)."""
    after_write: Callable[[Sequence[Document], dict[str, Any], StageRun], None] | None = None
    """Local: called with the records and the report once the outputs are written."""
    write: Callable[[StageRun], dict[str, Any]] | None = None
    """Local, for a stage whose outputs are not records (the shard set): read, plan and write
    ``outputs`` itself and return the report; its Spark twin (``spark_corpus``) returns the
    report too.  Such a stage declares every flag it takes (no executor flags are added)."""
    summary: Callable[[dict[str, Any]], str] | None = None
    """The summary line (default :func:`summary_line`)."""
    input_help: str | None = None
    """``--input`` help when the shared wording does not fit."""
    output_help: str | None = None
    """``--output`` help when the shared wording does not fit."""
    on_error_flag: bool = True
    """Whether the stage takes ``--on-error`` (its own section has an ``on_error`` field)."""
    batch_docs: Callable[[Mapping[str, Any]], int] | None = None
    """The pipeline's natural batch (documents per model call): Spark's Arrow batches hold
    this many, a local worker process gets four at a time. Default: 512 (Spark), 256 (local)."""
    outputs: tuple[str, ...] = STAGE_OUTPUTS
    """What the stage writes under ``--output``."""
    parser_class: type[ArgumentParser] = field(default=ArgumentParser)
    """The parser (a subclass may name more files that make an existing output replaceable)."""
    spark_conf: Mapping[str, str] = field(default_factory=FrozenDict)
    """Spark SQL settings the Spark executor applies while it runs this stage (read to write),
    each unless the session already sets it (``--conf``, ``spark-defaults.conf``,
    ``spark.conf.set``), and restores afterwards (``spark_jobs.common.session_conf``)."""

    def spark_operation(self) -> Callable[..., Any]:
        """The Spark whole-corpus function named by :attr:`spark_corpus` (imported now)."""
        return resolve_dotted(self.spark_corpus)

    def names_of_steps(self, configs: Mapping[str, Any]) -> list[str]:
        """The step names of the per-step table in ``stats.json``."""
        if self.step_names is not None:
            return list(self.step_names(configs))
        return self.pipeline(configs)().step_names if self.pipeline is not None else []


def resolve_dotted(name: str | None) -> Any:
    """``module:attribute`` -> the attribute."""
    if not name or ":" not in name:
        raise ValueError(f"expected 'module:attribute', got {name!r}")
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def stage_parser(stage: Stage, prog: str, executor_flags: Callable[[argparse.ArgumentParser], None] | None = None,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``stage`` for one executor: the shared flags, the stage's own,
    then the executor's (``--workers`` locally, ``--partitions`` on Spark)."""
    parser = stage.parser_class(prog=prog, description=stage.description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_io_args(parser, on_error=stage.on_error_flag, input_help=stage.input_help, output_help=stage.output_help)
    if stage.add_flags is not None:
        stage.add_flags(parser)
    if executor_flags is not None and stage.write is None:
        executor_flags(parser)
    return parser


def resolve_run(stage: Stage, args: argparse.Namespace, runner: str) -> StageRun:
    """Load the stage's params sections (one read of the file) and apply ``--on-error``."""
    if runner not in EXECUTORS:
        raise ValueError(f"runner must be one of {list(EXECUTORS)}, got {runner!r}")
    params = load_params(args.params)
    configs = load_stage_configs(stage, params, getattr(args, "on_error", None))
    if stage.apply_flags is not None:
        configs = stage.apply_flags(args, configs)
    run = StageRun(stage, args, configs, runner, params, params_hash(config_to_dict(configs[stage.sections[0]])))
    if stage.check is not None:
        stage.check(run)
    return run


def load_stage_configs(stage: Stage, params: str | os.PathLike | dict | None, on_error: str | None = None) -> dict[str, Any]:
    """The stage's sections (and ``read``) from one read of the params file, with ``on_error``
    (the ``--on-error`` flag) over the stage's own section."""
    params = params if isinstance(params, dict) else load_params(params)
    names = list(dict.fromkeys([*stage.sections, "read"]))
    configs = {name: load_section(params, name) for name in names}
    if on_error:
        own = stage.sections[0]
        configs[own] = dataclasses.replace(configs[own], on_error=on_error)
    return configs


def base_stats(run: StageRun) -> dict[str, Any]:
    """What every ``stats.json`` records besides the counts: stage, runner, params hash."""
    return {"stage": run.stage.name, "runner": run.runner, "params_hash": run.params_hash or params_hash(config_to_dict(run.config))}


def stage_summary(stage: Stage, report: dict[str, Any]) -> str:
    """The stage's summary line (its own, or :func:`summary_line`)."""
    return stage.summary(report) if stage.summary is not None else summary_line(stage.name, report)


def summary_line(stage_name: str, report: dict[str, Any]) -> str:
    """One human-readable line per stage run (the full report is ``stats.json``)."""
    reasons = ", ".join(f"{k}={v}" for k, v in report.get("drop_reasons", {}).items()) or "none"
    return (f"[{stage_name}] in={report['num_in']} kept={report['num_kept']} rejected={report['num_rejected']} "
            f"chars {report['chars_in']}->{report['chars_out']} drop reasons: {reasons}")

