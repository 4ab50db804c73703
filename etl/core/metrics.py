"""The trainer's metrics JSON Lines, read one way by every reader (the trainer, its report and
the pipeline report)."""
from __future__ import annotations

import json
import os
from typing import Any


def read_metrics(path: str | os.PathLike, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file in step order; a resumed run's repeated steps: the later
    row wins.  A missing file is an error, or no rows with ``missing_ok``."""
    if missing_ok and not os.path.isfile(path):
        return []
    rows: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]
