"""Command-line flags every stage shares, for the Spark jobs and the local runners alike.

:class:`ArgumentParser` is the parser of every jinglian command: it lists ``--debug`` in
``--help`` (the flag itself is handled by :func:`etl.core.errors.run_main`) and, for commands with
``--input``/``--output``, refuses an output that would destroy or re-read data
(:func:`etl.core.atomic.check_output`) right after parsing, before any work.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from etl.core.atomic import check_output
from etl.core.errors import DEBUG_ENV, DEBUG_FLAG
from etl.core.step import ON_ERROR_CHOICES


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``--debug`` and the output-path check."""

    #: File names (besides the stage marker) that make an existing --output replaceable.
    output_markers: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS,
                          help=f"on an error, show the whole traceback instead of one line (or set {DEBUG_ENV}=1)")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        inputs = getattr(parsed, "input", None) or []
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if inputs and getattr(parsed, "check_inputs", True):
            check_inputs(inputs)
        output = getattr(parsed, "output", None)
        if isinstance(output, str) and getattr(parsed, "check_output", True):
            check_output(output, inputs, extra_markers=self.output_markers)
        return parsed


def check_inputs(inputs: Sequence[str]) -> None:
    """Fail before any work when an input (a path, a directory or a glob; ``GROUP=PATH``
    understood) does not exist or matches no file. Only existence is checked (the stage lists
    the files itself, so a large directory is not walked twice); remote URIs are left to the engine."""
    import glob
    import os

    from etl.core.atomic import split_labelled_input

    for raw in inputs:
        path = split_labelled_input(raw)[1]
        if "://" in path and not path.startswith("file://"):
            continue
        path = path[len("file://"):] if path.startswith("file://") else path
        if glob.has_magic(path):
            if next(glob.iglob(path, recursive=True), None) is None:
                raise FileNotFoundError(f"input {path!r} matches no file")
        elif not os.path.exists(path):
            raise FileNotFoundError(f"input {path!r} does not exist")


def add_io_args(parser: argparse.ArgumentParser, on_error: bool = True, input_help: str | None = None,
                output_help: str | None = None) -> argparse.ArgumentParser:
    """Add --input, --output, --params (and --on-error) with one wording everywhere."""
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help=input_help or "input files, directories (searched recursively) or globs: JSON Lines (.gz), Parquet, text, HTML; "
                                           "a stage output directory is read from its kept/")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help=output_help or "output directory; receives kept/, rejected/ and stats.json, written atomically. It must not "
                                            "exist, be empty, or be a previous jinglian output (which is replaced); it may not overlap an input")
    parser.add_argument("--params", default=None, metavar="YAML", help="params file (default: ./params.yaml, else the repository's, else the copy installed with jinglian)")
    if on_error:
        parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default=None,
                            help="per-record failures: 'skip' rejects the record with reason error_<Type>; 'raise' stops the job "
                                 "(default: the stage's on_error param)")
    return parser
