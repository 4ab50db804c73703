"""The shards stage, declared once (:data:`SHARDS`): tokenise, plan the mix, write the shard set.

    python -m shards build --input general=DIR domain=DIR expert=DIR --output DIR [--params YAML] [--tokenizer PATH]
    spark-submit spark_jobs/build_shards.py (same flags)

Its whole-corpus operation is the mix plan; its output is a shard set with ``manifest.json``
written last (not kept/rejected records), so the stage writes its own outputs: locally with
:func:`shards.build.build_local`, on Spark with ``spark_jobs.corpus.shards.run_shards``.
Both read the inputs with the ``read:`` params.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from etl.core.cli import ArgumentParser
from etl.core.errors import JinglianError
from etl.core.stage import Stage, StageRun


class ShardsArgumentParser(ArgumentParser):
    """An existing shard set (manifest.json) or tokenizer directory (tokenizer.json) may be
    rebuilt in place; any other non-empty --output is refused."""

    output_markers = ("manifest.json", "tokenizer.json")


def add_shards_flags(parser: argparse.ArgumentParser) -> None:
    """The shards stage's own flags (shared by both executors)."""
    parser.add_argument("--tokenizer", default=None, metavar="PATH_OR_HUB_ID", help="overrides params shards.tokenizer")
    parser.add_argument("--partitions", type=int, default=None, metavar="N",
                        help="partitions (shard-<partition>-<n>.tar); default 1 locally, Spark's default parallelism in Spark")


def check_tokenizer(run: StageRun) -> None:
    """A tokenizer must be given (params shards.tokenizer or --tokenizer), checked before any work."""
    if not (run.args.tokenizer or run.config.tokenizer):
        raise JinglianError("shards.tokenizer: no tokenizer given (params shards.tokenizer or --tokenizer)")


def build_shards_local(run: StageRun) -> dict[str, Any]:
    """Build the shard set in this process; returns the manifest."""
    from shards.build import build_local

    args = run.args
    return build_local(args.input, args.output, run.config, run.params.get("shards") or {}, tokenizer_path=args.tokenizer,
                       num_partitions=args.partitions or 1, reader_config=run.reader)


def summary_line(manifest: dict) -> str:
    """The stage's summary line: shards, documents, tokens, achieved shares, repeats, rejected."""
    shares = {g: round(n / max(1, manifest["num_tokens"]), 4) for g, n in manifest["tokens_by_group"].items()}
    return (f"[shards] {len(manifest['shards'])} shards, {manifest['num_slots']} docs, {manifest['num_tokens']} tokens, "
            f"token shares {json.dumps(shares)}, repeats {json.dumps(manifest['repeats'])}, rejected {manifest['num_rejected']}")


SHARDS = Stage(
    name="shards",
    description="Tokenise records, plan the general:domain:expert mix, write WebDataset shards and manifest.json (last).",
    sections=("shards",),
    write=build_shards_local,
    spark_corpus="spark_jobs.corpus.shards:run_shards",
    add_flags=add_shards_flags,
    check=check_tokenizer,
    summary=summary_line,
    input_help="input files/dirs/globs; GROUP=PATH puts every record of PATH in mix group GROUP "
               "(otherwise the record's domain is mapped by params shards.groups)",
    output_help="shard set directory (shards, manifest.json last)",
    on_error_flag=False,
    outputs=("shard-*.tar", "rejected/", "manifest.json"),
    parser_class=ShardsArgumentParser,
)
