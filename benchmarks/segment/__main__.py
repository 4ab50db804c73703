"""Segmentation benchmark: rjieba (jieba-rs) against jieba on every Han run of the shared corpora.

    python -m benchmarks.segment [--corpora ../shared/corpora] [--max-docs 0]

For each mode (HMM on, HMM off, HMM on with a user dictionary, and part-of-speech tags against
``jieba.posseg``) it segments the same Han runs (``etl.clean.tokenize.split_runs``) with both
libraries in the same process and reports the share of runs with identical output, every
differing run (up to a cap), and both libraries' time.  Then it runs the decisions that depend on segmentation on every record
of the corpora with either segmenter: the clean stage (its quality rules tokenise non-CJK
documents; the Chinese rules count characters) and the TF-IDF filter over the cleaned corpus
(``etl.tfidf.score_documents``, params.yaml's settings), and lists every record whose decision
differs.  Writes benchmarks/results/segment.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from etl.clean.tokenize import TokenizerConfig, han_segmenter, split_runs
from etl.io.records import read_inputs

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"
FILES = ("general_zh", "domain_medical", "expert", "dialogues", "html_pages", "general_en")
#: A user dictionary with every line form jieba accepts (word; word freq; word tag; word freq tag),
#: of word pairs that jieba splits in the corpora, so that it changes segmentations there.
USER_DICT = "本作\n敲击乐 nz\n欲知 50\n武器情报 20 n\n主打两大模式 3 n\n内科医生\n高血压病人 1000 n\n"
MAX_SHOWN = 40


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=str(CORPORA))
    p.add_argument("--max-docs", type=int, default=0, help="documents per corpus file (0: all)")
    p.add_argument("--pos-runs", type=int, default=20000, help="Han runs for the part-of-speech rows (jieba.posseg is ~30x slower)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "segment.json"))
    return p.parse_args(argv)


def _texts(record) -> list[str]:
    turns = record.meta.get("turns") if isinstance(record.meta, dict) else None
    texts = [record.text] if record.text else []
    texts += [t["text"] for t in turns or () if isinstance(t, dict) and isinstance(t.get("text"), str)]
    return texts


def load_han_runs(corpora: Path, max_docs: int) -> list[str]:
    """Every Han run of every text (dialogue turns included) of the corpus files."""
    runs = []
    for name in FILES:
        records = [r for r in read_inputs([corpora / f"{name}.jsonl"]) if not r.dropped]
        for record in records[: max_docs or None]:
            for text in _texts(record):
                runs.extend(seg for kind, seg in split_runs(text) if kind == "han")
    return runs


def _timed(fn, runs):
    start = time.perf_counter()
    out = [fn(r) for r in runs]
    return out, time.perf_counter() - start


def compare(name: str, runs: list[str], jieba_fn, rjieba_fn) -> tuple[dict, list]:
    """Identity rate, differing runs and seconds for one mode; and jieba's output."""
    ref, ref_s = _timed(jieba_fn, runs)
    new, new_s = _timed(rjieba_fn, runs)
    diffs = [{"run": r, "jieba": a, "rjieba": b} for r, a, b in zip(runs, ref, new) if a != b]
    chars = sum(map(len, runs))
    return {"mode": name, "runs": len(runs), "chars": chars, "identical_runs": len(runs) - len(diffs),
            "identity_rate": round(1 - len(diffs) / max(1, len(runs)), 6), "differing_runs": diffs[:MAX_SHOWN],
            "jieba_s": round(ref_s, 3), "rjieba_s": round(new_s, 3), "speed_ratio": round(ref_s / new_s, 2),
            "jieba_chars_per_s": round(chars / ref_s), "rjieba_chars_per_s": round(chars / new_s)}, ref


def run_modes(runs: list[str], user_dict: str, pos_runs: int) -> list[dict]:
    import jieba.posseg

    rows, outputs = [], {}
    for name, hmm, dicts in (("hmm", True, ()), ("no_hmm", False, ()), ("hmm_user_dict", True, (user_dict,))):
        ref = han_segmenter(TokenizerConfig(segmenter="jieba", hmm=hmm, user_dicts=dicts))
        new = han_segmenter(TokenizerConfig(segmenter="rjieba", hmm=hmm, user_dicts=dicts))
        row, outputs[name] = compare(name, runs, ref, new)
        rows.append(row)
    # the user dictionary must change something for its row to test anything
    rows[-1]["runs_changed_by_user_dict"] = sum(a != b for a, b in zip(outputs["hmm"], outputs["hmm_user_dict"]))
    for name, dicts in (("pos_hmm", ()), ("pos_hmm_user_dict", (user_dict,))):
        from etl.clean.tokenize import _jieba, _rjieba

        pos = jieba.posseg.POSTokenizer(_jieba(dicts))
        rj = _rjieba(dicts)
        rows.append(compare(name, runs[:pos_runs], lambda r, pos=pos: [(p.word, p.flag) for p in pos.cut(r, HMM=True)],
                            lambda r, rj=rj: [tuple(p) for p in rj.tag(r, True)])[0])
    return rows


def decision_impact(corpora: Path, max_docs: int) -> dict:
    """Clean and TF-IDF decisions of every record with jieba and with rjieba (same run)."""
    from benchmarks.clean.baseline import decisions
    from etl.clean.pipeline import CleanConfig, build_clean_pipeline
    from etl.core.config import load_sections
    from etl.core.document import Document
    from etl.tfidf import score_documents

    records = []
    for name in FILES:
        records += [r for r in read_inputs([corpora / f"{name}.jsonl"]) if not r.dropped][: max_docs or None]
    (tfidf_config,) = load_sections(str(ROOT / "params.yaml"), "tfidf")
    out = {}
    for name in ("jieba", "rjieba"):
        tok = TokenizerConfig(segmenter=name)
        list(build_clean_pipeline(CleanConfig(), tok)([Document(id="warm-up", text="预热 warm-up " * 20)]))  # dictionaries, langid, numba
        start = time.perf_counter()
        cleaned = list(build_clean_pipeline(CleanConfig(), tok)(Document.from_row(r.to_row()) for r in records))
        clean_s = time.perf_counter() - start
        start = time.perf_counter()
        scored, stats = score_documents([d for d in cleaned if not d.dropped], tfidf_config, tok)
        out[name] = {"clean": decisions(cleaned), "tfidf": decisions(scored), "scores": {d.id: d.meta.get("tfidf_score") for d in scored},
                     "clean_s": clean_s, "tfidf_s": time.perf_counter() - start, "threshold": stats["threshold"]}
    a, b = out["jieba"], out["rjieba"]
    report = {"records": len(records)}
    for stage in ("clean", "tfidf"):
        diff = sorted(i for i in a[stage] if a[stage][i] != b[stage].get(i))
        report[stage] = {"decisions": len(a[stage]), "num_differing": len(diff), "jieba_s": round(a[f"{stage}_s"], 2), "rjieba_s": round(b[f"{stage}_s"], 2),
                         "differing": [{"id": i, "jieba": a[stage][i], "rjieba": b[stage].get(i)} for i in diff[:MAX_SHOWN]]}
    changed = [i for i in a["scores"] if a["scores"][i] != b["scores"].get(i)]
    report["tfidf"].update(threshold_jieba=a["threshold"], threshold_rjieba=b["threshold"], num_scores_changed=len(changed),
                           max_abs_score_change=max((abs(a["scores"][i] - b["scores"][i]) for i in changed), default=0.0),
                           min_margin_of_changed=min((abs(a["scores"][i] - a["threshold"]) for i in changed), default=None))
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = load_han_runs(Path(args.corpora), args.max_docs)
    with tempfile.TemporaryDirectory() as tmp:
        user_dict = str(Path(tmp) / "user.dict")
        Path(user_dict).write_text(USER_DICT, encoding="utf-8")
        for cfg in (TokenizerConfig(segmenter="jieba"), TokenizerConfig(segmenter="rjieba"), TokenizerConfig(segmenter="jieba", user_dicts=(user_dict,)),
                    TokenizerConfig(segmenter="rjieba", user_dicts=(user_dict,))):
            han_segmenter(cfg)("预热")  # dictionaries load outside the timing
        rows = run_modes(runs, user_dict, args.pos_runs)
    impact = decision_impact(Path(args.corpora), args.max_docs)
    report = {"corpora": args.corpora, "files": list(FILES), "max_docs_per_file": args.max_docs, "pos_runs": args.pos_runs, "user_dict": USER_DICT.splitlines(),
              "modes": rows, "decisions": impact}
    Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps([{k: v for k, v in r.items() if k != "differing_runs"} for r in rows] + [impact], indent=2, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
