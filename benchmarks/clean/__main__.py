"""Cleaning benchmark: jinglian's rules vs DataTrove's on the same documents in the same run.

    python -m benchmarks.clean [--corpora ../shared/corpora] [--max-docs 600] [--scales 1 2 4] [--spark] [--baseline REF]

Reports documents/s and MB/s per core for (a) the whole local clean pipeline, (b) jinglian's
Gopher quality + Gopher repetition + C4 rules versus DataTrove's GopherQualityFilter,
GopherRepetitionFilter and C4QualityFilter (spaCy word tokenizer, DataTrove's default) on the
same English documents, with the agreement of their keep/drop decisions, (c) optionally the
Spark job on local[2], (d) time and peak memory at 1x..4x the data, and (e) the HTML extractor
comparison (recall of main-content blocks, leaked navigation strings, pages/s).  With
``--baseline REF`` the local pipeline of commit REF (its ``etl/`` from ``git archive``) runs on
the same documents in the same run, alternating with the current one (``--rounds``, the round with
least CPU time kept; documents per CPU second is the per-core rate), and every document's decision (drop reason, or the kept text's hash) is compared.
Results go to benchmarks/results/clean.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from etl.clean.pipeline import CleanConfig, build_clean_pipeline
from etl.clean.quality import QualityConfig, c4_rules, gopher_quality, repetition
from etl.clean.tokenize import TokenizerConfig, tokenize
from etl.core.document import Document
from etl.io.records import read_inputs, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.clean", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=str(ROOT.parent.parent / "shared" / "corpora") if not (ROOT / "../shared/corpora").exists() else str(ROOT / "../shared/corpora"))
    p.add_argument("--max-docs", type=int, default=600, help="documents per text corpus file")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="data multiples for the scaling run")
    p.add_argument("--spark", action="store_true", help="also time spark_jobs/clean.py at each scale in one Spark session (default master: all cores)")
    p.add_argument("--baseline", default=None, help="git commit whose local clean pipeline runs beside the current one")
    p.add_argument("--rounds", type=int, default=2, help="alternating baseline/current rounds; the best time per scale is kept")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "clean.json"))
    return p.parse_args(argv)


def load_docs(corpora: Path, max_docs: int) -> list[Document]:
    docs = []
    for name in ("general_en", "general_zh", "domain_medical", "expert"):
        read = [d for d in read_inputs([corpora / f"{name}.jsonl"]) if not d.dropped]
        docs.extend(read[:max_docs])
    return docs


def _mb(docs) -> float:
    return sum(len(d.text.encode("utf-8")) for d in docs) / 1e6


def time_pipeline(docs: list[Document]) -> dict:
    copies = [Document.from_row(d.to_row()) for d in docs]
    pipeline = build_clean_pipeline()
    list(pipeline([Document.from_row(docs[0].to_row())]))  # warm up jieba, langid
    start = time.perf_counter()
    out = list(pipeline(copies))
    elapsed = time.perf_counter() - start
    return {"docs": len(docs), "mb": round(_mb(docs), 3), "s": round(elapsed, 3), "docs_per_s": round(len(docs) / elapsed, 1),
            "mb_per_s": round(_mb(docs) / elapsed, 3), "kept": sum(not d.dropped for d in out)}


PARITY_C4 = dict(min_sentences=5, curly_bracket=True, remove_lines=True)


def jinglian_rules(doc_text: str, config: QualityConfig, tok: TokenizerConfig) -> bool:
    tokens = tokenize(doc_text, tok)
    lines = doc_text.splitlines()
    if not tokens or gopher_quality(doc_text, lines, tokens, config.gopher):
        return False
    if repetition(doc_text, tokens, config.repetition.top_ngram_char_frac, config.repetition.dup_ngram_char_frac, config.repetition):
        return False
    return c4_rules(doc_text, config.c4)[0] is None


def compare_datatrove(docs: list[Document]) -> dict:
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    english = [d for d in docs if d.lang == "en" or re.match(r"^[\x00-\x7f\u2018-\u201d]*$", d.text[:200])]
    filters = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter()]
    dt_docs = [DTDocument(text=d.text, id=d.id) for d in english]
    filters[0].filter(dt_docs[0])  # load spaCy once

    def dt_keep(doc):
        for f in filters:
            res = f.filter(doc)
            if res is not True and not (isinstance(res, tuple) and res[0]):
                return False
        return True

    start = time.perf_counter()
    dt = [dt_keep(DTDocument(text=d.text, id=d.id)) for d in english]
    dt_s = time.perf_counter() - start
    config = QualityConfig(c4=dataclasses.replace(QualityConfig().c4, **PARITY_C4))
    results = {}
    for name, tok in (("treebank", TokenizerConfig()), ("wordpunct", TokenizerConfig(english="wordpunct"))):
        jinglian_rules(english[0].text, config, tok)
        start = time.perf_counter()
        ours = [jinglian_rules(d.text, config, tok) for d in english]
        s = time.perf_counter() - start
        results[name] = {"s": round(s, 3), "docs_per_s": round(len(english) / s, 1), "speed_ratio_vs_datatrove": round(dt_s / s, 2),
                         "decision_agreement": round(sum(a == b for a, b in zip(ours, dt)) / len(dt), 3), "kept": sum(ours)}
    return {"docs": len(english), "mb": round(_mb(english), 3), "datatrove": {"s": round(dt_s, 3), "docs_per_s": round(len(english) / dt_s, 1), "kept": sum(dt)},
            "jinglian": results, "config": {"c4": PARITY_C4, "note": "both sides: Gopher quality + repetition + C4 with C4's own 5 sentences, curly brackets, line removal"}}


def html_comparison(corpora: Path) -> dict:
    from lxml import html as lxml_html

    from etl.clean.html import extract_resiliparse, extract_trafilatura

    pages = [d for d in read_inputs([corpora / "html_pages.jsonl"]) if not d.dropped]
    nav_xpath = "//*[contains(@class,'nav') or contains(@class,'footer') or contains(@class,'header') or self::nav or self::footer]"
    out = {}
    for name, fn in (("resiliparse", lambda h: extract_resiliparse(h)), ("trafilatura", lambda h: extract_trafilatura(h))):
        fn(pages[0].text)
        recalls, leaks, total_s = [], [], 0.0
        for page in pages:
            start = time.perf_counter()
            text = fn(page.text)
            total_s += time.perf_counter() - start
            norm = " ".join(text.split())
            tree = lxml_html.fromstring(page.text.encode("utf-8"))
            nav = {" ".join(e.text_content().split()) for e in tree.xpath(nav_xpath)}
            nav = {t for t in nav if len(t) >= 8}
            for e in tree.xpath(nav_xpath):
                e.drop_tree()
            blocks = [" ".join(e.text_content().split()) for e in tree.xpath("//body//*[self::p or self::h1 or self::h2 or self::h3 or self::h4 or self::li or self::pre]")]
            blocks = [b for b in blocks if len(b) >= 20]
            if blocks:
                recalls.append(sum(b in norm for b in blocks) / len(blocks))
            if nav:
                leaks.append(sum(t in norm for t in nav) / len(nav))
        out[name] = {"pages": len(pages), "pages_per_s": round(len(pages) / total_s, 1), "mean_block_recall": round(sum(recalls) / len(recalls), 3),
                     "mean_nav_leak": round(sum(leaks) / max(1, len(leaks)), 3)}
    return out


def _run_scales(tree: Path, docs_path: Path, scales: list[int]) -> dict:
    """benchmarks/clean/baseline.py in a fresh process with ``tree``'s ``etl`` package."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, PYTHONPATH=str(tree))
        subprocess.run([sys.executable, str(Path(__file__).with_name("baseline.py")), str(docs_path), out.name, *map(str, scales)],
                       cwd=tree, env=env, check=True)
        return json.loads(Path(out.name).read_text())


def _best(rounds: list[list[dict]]) -> list[dict]:
    return [min(rows, key=lambda r: r["cpu_s"]) for rows in zip(*rounds)]


def compare_baseline(docs: list[Document], scales: list[int], ref: str, num_rounds: int) -> tuple[list[dict], dict]:
    """The current and ``ref``'s local pipeline, alternating, each in its own process on the same
    documents: current scaling rows, and the baseline's rows with the decision check."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", ref, "etl"], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(base)
        docs_path = Path(tmp) / "docs.jsonl"
        write_jsonl(docs, docs_path)
        runs = [(_run_scales(base, docs_path, scales), _run_scales(ROOT, docs_path, scales)) for _ in range(num_rounds)]
    old, new = runs[0][0]["decisions"], runs[0][1]["decisions"]
    differing = sorted(i for i in old if old[i] != new.get(i))
    rows_old, rows_new = _best([r[0]["scaling"] for r in runs]), _best([r[1]["scaling"] for r in runs])
    for row_old, row_new in zip(rows_old, rows_new):
        row_new["speedup_vs_baseline"] = round(row_old["cpu_s"] / row_new["cpu_s"], 2)
        row_new["wall_speedup_vs_baseline"] = round(row_old["s"] / row_new["s"], 2)
    check = {"docs": len(old), "kept_before": sum(v.startswith("kept:") for v in old.values()), "kept_after": sum(v.startswith("kept:") for v in new.values()),
             "identical": not differing and old.keys() == new.keys(), "differing": [{"id": i, "before": old[i], "after": new.get(i)} for i in differing[:20]],
             "what": "every document's drop reason, or sha1 of its cleaned text when kept, at 1x"}
    return rows_new, {"ref": ref, "rounds": num_rounds, "scaling": rows_old, "decisions_check": check}


def _copies(docs: list[Document], k: int) -> list[Document]:
    """``k`` copies of ``docs`` under distinct ids (repeated ids would be rejected by the reader)."""
    return [Document(id=f"{d.id}#{j}" if j else d.id, text=d.text, source=d.source, domain=d.domain, lang=d.lang, meta=dict(d.meta))
            for j in range(k) for d in docs]


def spark_run(docs: list[Document], scales: list[int]) -> dict:
    """Time spark_jobs/clean.py at each scale in one session (Spark's default master: all cores).

    The session start (JVM) is timed on its own; the first job also pays the Python workers'
    start and the pipeline build (jieba, langid); the steady-state rate is the time difference
    between the largest scale and the second (the first warm job), or the first with two scales.
    """
    from spark_jobs.clean import main as spark_main
    from spark_jobs.common import get_spark

    start = time.perf_counter()
    spark = get_spark("clean-benchmark")
    session_s = time.perf_counter() - start
    cores = spark.sparkContext.defaultParallelism
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in scales:
            batch = _copies(docs, k)
            path = Path(tmp) / f"in-{k}.jsonl"
            write_jsonl(batch, path)
            start = time.perf_counter()
            report = spark_main(["--input", str(path), "--output", str(Path(tmp) / f"out-{k}")])
            s = time.perf_counter() - start
            rows.append({"scale": k, "docs": len(batch), "mb": round(_mb(batch), 3), "s": round(s, 2), "kept": report["num_kept"],
                         "docs_per_s_per_core": round(len(batch) / s / cores, 1), "mb_per_s_per_core": round(_mb(batch) / s / cores, 3)})
    # the first job also starts the Python workers and builds the pipeline (jieba, langid):
    # the steady state is measured between warm jobs when there are more than two scales
    first, last = (rows[1] if len(rows) > 2 else rows[0]), rows[-1]
    out = {"master": spark.sparkContext.master, "cores": cores, "session_start_s": round(session_s, 2), "scaling": rows,
           "docs": rows[0]["docs"], "s": rows[0]["s"], "s_with_session_start": round(rows[0]["s"] + session_s, 2),
           "docs_per_s_per_core_with_session_start": round(rows[0]["docs"] / (rows[0]["s"] + session_s) / cores, 1)}
    if last["docs"] > first["docs"] and last["s"] > first["s"]:
        ds = last["s"] - first["s"]
        out["steady_state"] = {"from_docs": first["docs"], "to_docs": last["docs"], "extra_s": round(ds, 2),
                               "docs_per_s_per_core": round((last["docs"] - first["docs"]) / ds / cores, 1),
                               "mb_per_s_per_core": round((last["mb"] - first["mb"]) / ds / cores, 3)}
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    corpora = Path(args.corpora)
    docs = load_docs(corpora, args.max_docs)
    report = {"corpora": str(corpora), "max_docs_per_file": args.max_docs, "cores": 1}
    if args.baseline:
        report["scaling_local"], report["baseline"] = compare_baseline(docs, args.scales, args.baseline, args.rounds)
    else:
        report["scaling_local"] = [dict(scale=k, **time_pipeline(docs * k)) for k in args.scales]
    mb = _mb(docs)
    for row in report["scaling_local"]:
        row.setdefault("mb", round(mb * row["scale"], 3))
        row.setdefault("mb_per_s", round(mb * row["scale"] / row["s"], 3))
    report["local_pipeline"] = report["scaling_local"][0]
    annotated = list(build_clean_pipeline(CleanConfig())(Document.from_row(d.to_row()) for d in docs))
    for raw, ann in zip(docs, annotated):
        raw.lang = ann.lang
    report["rules_vs_datatrove"] = compare_datatrove(docs)
    report["html_extractors"] = html_comparison(corpora)
    if args.spark:
        report["spark"] = spark_run(docs, args.scales)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
