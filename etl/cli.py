"""Command-line flags every stage shares, for the Spark jobs and the local runners alike."""
from __future__ import annotations

import argparse

from etl.step import ON_ERROR_CHOICES


def add_io_args(parser: argparse.ArgumentParser, on_error: bool = True) -> argparse.ArgumentParser:
    """Add --input, --output, --params (and --on-error) with one wording everywhere."""
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="input files, directories (searched recursively) or globs: JSON Lines (.gz), Parquet, text, HTML; "
                             "a stage output directory is read from its kept/")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output directory; receives kept/, rejected/ and stats.json, written atomically")
    parser.add_argument("--params", default=None, metavar="YAML", help="params file (default: the repository's params.yaml)")
    if on_error:
        parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default=None,
                            help="per-record failures: 'skip' rejects the record with reason error_<Type>; 'raise' stops the job "
                                 "(default: the stage's on_error param)")
    return parser
