"""Time and record the local clean pipeline of whatever ``etl`` package is first on ``sys.path``.

    python benchmarks/clean/baseline.py DOCS.jsonl OUT.json SCALE [SCALE ...]

The clean benchmark runs it on a checkout of an older commit (``--baseline REF``), in its own
process on the same documents right before the current code, so the before/after figures and
decisions come from one run.  It only uses APIs both versions have: ``build_clean_pipeline``,
``Document.from_row``/``to_row`` and ``read_inputs``.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path


def decisions(docs) -> dict[str, str]:
    """id -> drop reason, or ``kept:<sha1 of the cleaned text>`` (so kept texts must match too)."""
    return {d.id: d.drop_reason if d.dropped else "kept:" + hashlib.sha1(d.text.encode("utf-8")).hexdigest()[:16] for d in docs}


def time_scales(docs, scales, build) -> tuple[list[dict], dict[str, str]]:
    """Seconds for each multiple of ``docs`` (fresh copies, one warm-up document first), and the
    decisions at 1x."""
    from etl.core.document import Document

    pipeline = build()
    list(pipeline([Document.from_row(docs[0].to_row())]))  # warm up jieba, langid, numba
    rows, first = [], None
    for k in scales:
        copies = [Document.from_row(d.to_row()) for _ in range(k) for d in docs]
        start, start_cpu = time.perf_counter(), time.process_time()
        out = list(pipeline(copies))
        s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        # per core: CPU seconds of this one-thread process, less sensitive than wall time to
        # other jobs on a shared machine (wall time is kept beside it)
        rows.append({"scale": k, "docs": len(copies), "s": round(s, 3), "cpu_s": round(cpu_s, 3), "docs_per_s": round(len(copies) / s, 1),
                     "docs_per_cpu_s": round(len(copies) / cpu_s, 1),
                     "kept": sum(not d.dropped for d in out), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        first = first or decisions(out[: len(docs)])
    return rows, first


def main(argv=None) -> None:
    from etl.clean.pipeline import build_clean_pipeline
    from etl.io.records import read_inputs

    docs_path, out_path, *scales = argv if argv is not None else sys.argv[1:]
    docs = [d for d in read_inputs([Path(docs_path)]) if not d.dropped]
    rows, dec = time_scales(docs, [int(k) for k in scales], build_clean_pipeline)
    Path(out_path).write_text(json.dumps({"scaling": rows, "decisions": dec}))


if __name__ == "__main__":
    main()
