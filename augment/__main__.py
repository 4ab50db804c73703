"""Local runner: ``python -m augment --input DIR --output DIR [--params params.yaml] [--workers N]``.

The same steps as ``spark_jobs/augment.py``, in one process or a process pool (each worker
loads the models once).  Writes ``kept/`` (originals and kept variants), ``rejected/``
(variants dropped by the guard, with reasons and lineage) and ``stats.json`` (with per-method
counts under ``augment``), atomically.
"""
from __future__ import annotations

import argparse
import functools
import logging
from typing import Iterable, Iterator, Mapping

from augment.config import AugmentConfig, load_augment_config
from augment.pipeline import StatsTap, build_pipeline
from etl.core.cli import ArgumentParser
from etl.core.config import config_to_dict, load_params, load_section, params_hash
from etl.core.errors import run_main
from etl.core.document import Document
from etl.io.records import read_inputs
from etl.runner import run_pipeline, write_stage_output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m augment", description="Augment documents (back-translation, masked-LM substitution, entity swap) locally.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="input files, directories or globs (a previous stage's kept/ or JSON Lines)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory: kept/, rejected/, stats.json (atomic)")
    parser.add_argument("--params", default=None, metavar="YAML", help="params file (default: the repository's params.yaml)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads the models once)")
    parser.add_argument("--on-error", choices=("skip", "raise"), default=None, help="per-document failures (default: augment.on_error)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def make_config(params: dict, on_error: str | None) -> AugmentConfig:
    section = dict(params.get("augment") or {})
    if on_error:
        section["on_error"] = on_error
    return load_augment_config({"augment": section})


class LazyStats(Mapping):
    """Extra stats read by ``write_stage_output`` after the stream is consumed (so the counts are complete)."""

    def __init__(self, tap: StatsTap, params_digest: str):
        self.tap, self.params_digest = tap, params_digest

    def _data(self) -> dict:
        return dict(self.tap.stats.to_dict(), params_hash=self.params_digest)

    def __getitem__(self, key):
        return self._data()[key]

    def __iter__(self):
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


def _factory(config: AugmentConfig):
    return build_pipeline(config)


def augment_documents(docs: Iterable[Document], config: AugmentConfig, workers: int = 1) -> Iterator[Document]:
    """Run the augment pipeline over ``docs`` locally (order: each parent, then its variants)."""
    return run_pipeline(docs, functools.partial(_factory, config), workers=workers, batch_size=config.batch_docs * 4)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params(args.params)
    config = make_config(params, args.on_error)
    reader = load_section(params, "read")
    tap = StatsTap()
    pipeline = build_pipeline(config)
    docs = tap(augment_documents(read_inputs(args.input, reader), config, args.workers))
    extra = LazyStats(tap, params_hash(config_to_dict(config)))
    report = write_stage_output(docs, args.output, pipeline.step_names, extra_stats=extra, progress=not args.no_progress, desc="augment")
    print(f"[augment] in={report['num_in']} kept={report['num_kept']} rejected={report['num_rejected']} by method: {report['augment']['by_method']}")
    return report


if __name__ == "__main__":
    run_main(main)
