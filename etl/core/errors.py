"""Errors a user can act on, and how entry points report them.

Every command-line entry point (``python -m etl.*``, ``python -m shards``, ``python -m augment``,
``python -m trainer.*``, ``spark_jobs/*.py``) runs its ``main`` through :func:`run_main`: an
error becomes one line on stderr (``jinglian: <what went wrong>``) and a non-zero exit code;
``--debug`` on the command line, or ``JINGLIAN_DEBUG=1`` in the environment, shows the whole
traceback instead.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

#: Exit code of a run stopped by an error (argparse's usage errors keep their own 2).
EXIT_ERROR = 1
#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "JINGLIAN_DEBUG"


class JinglianError(Exception):
    """An error caused by the input, the params or the environment, with a message that says
    what to fix (no traceback is needed to understand it)."""


class OutputRefused(JinglianError):
    """An output path that jinglian will not write: it holds data that is not a previous
    jinglian output, or it overlaps an input."""


class InputError(JinglianError):
    """An input path that does not exist, matches nothing or cannot be read."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when ``--debug`` is among the arguments or ``JINGLIAN_DEBUG`` is set (not 0/empty)."""
    argv = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


_JAVA_EXCEPTION = re.compile(r"^\s*(?:Caused by: )?((?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error)(?::.*)?)$")
_PY_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Refused|Warning)): (.+)$")


def one_line(exc: BaseException, limit: int = 600) -> str:
    """A one-line description of ``exc``: its message, or for multi-line messages (Spark's
    Java and Python worker errors) the line that names the root cause."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = f"missing key {exc.args[0]!r}"
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        # the innermost Python error a Spark worker raised, else the deepest Java cause
        py = [m.group(0) for m in map(_PY_EXCEPTION.match, lines) if m]
        java = [m.group(1) for m in map(_JAVA_EXCEPTION.match, lines) if m]
        text = py[-1] if py else java[-1] if java else lines[0]
    elif lines:
        text = lines[0]
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, (JinglianError, OSError, ValueError, KeyError)) and not _PY_EXCEPTION.match(text):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_main(main: Callable[..., Any], argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Run ``main(argv)`` as a command and exit: 0 on success (or ``main``'s integer result),
    one line on stderr and :data:`EXIT_ERROR` on an error, the traceback too with ``--debug``.

    ``--debug`` is taken out of the arguments before ``main`` sees them.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    prog = prog or os.path.basename(sys.argv[0] or "jinglian")
    try:
        result = main(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"jinglian: {prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BaseException as exc:  # noqa: BLE001 - every error becomes one line (or a traceback with --debug)
        if debug:
            traceback.print_exc()
        expected = isinstance(exc, (JinglianError, OSError, ValueError))
        hint = "" if debug or expected else f" (run with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)"
        print(f"jinglian: {one_line(exc)}{hint}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
