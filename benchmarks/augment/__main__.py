"""Augment benchmark: batched augmenters vs the per-sentence loop of popular libraries.

    python -m benchmarks.augment [--docs 16 32] [--bert-sizes small base] [--base-docs 8 16] [--out benchmarks/results/augment.json]

nlpaug's ``BackTranslationAug`` / ``ContextualWordEmbsAug`` and TextAttack run one sentence per
``generate`` or fill-mask call.  Here that loop is written with the same models, the same
sentences and the same words to mask, and timed against jinglian's augmenters (sentences of a
whole batch of documents pooled, length-sorted, ``batch_sentences`` per call) in the same run.
Models are random-weight but not trivial: Marian d_model 256, 3+3 layers; BERT "small" hidden
256, 4 layers, vocab 8000; tokenizers trained on tests/data.  ``--bert-sizes base`` adds a
masked-LM run with a bert-base-chinese-shaped BERT (hidden 768, 12 layers, 12 heads, FFN 3072,
vocabulary 21128: WordPiece trained to ~18k tokens here, embeddings and head padded to 21128)
on ``--base-docs`` documents; it measures speed only.  Random Marian weights rarely emit EOS, so every
sentence decodes ``max_new_tokens`` tokens in both arms (a fair, worst-case length).
The masked-LM baseline is nlpaug's: per sentence one call with one row per chosen word (only
that word masked); a second baseline masks all chosen words of the sentence in one row.
Both baselines share jinglian's word choice (one jieba pass per document), so the same words
are masked in every arm.  jinglian runs in its ``augment.dtype`` (``--dtype``, default ``auto``:
bf16 on CPUs with native bf16, else fp32); the baselines run fp32, as the libraries do on CPU;
when the two differ, jinglian in fp32 is timed too (``masked_lm_fp32_vs_one_row_per_word``).
Reports samples (documents) per second per method and the speed-up, at two input sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def load_docs(n: int, max_chars: int):
    from etl.core.document import Document

    docs = []
    for name in ("domain_medical.jsonl", "expert.jsonl"):
        with open(DATA / name, encoding="utf-8") as handle:
            docs += [Document.from_row(json.loads(line)) for line in handle]
    docs = [d for d in docs if d.lang in ("zh", "en")]
    zh = [d for d in docs if d.lang == "zh"]
    en = [d for d in docs if d.lang == "en"]
    picked = [d for pair in zip(zh, en) for d in pair][:n]  # alternate languages
    for d in picked:
        d.text = d.text[:max_chars]
        d.domain = "medical"
    return picked


def config_for(marian: str, bert: str, max_new_tokens: int, dtype: str = "auto", original_top_k: int = 0):
    """The benchmark's config.  ``original_top_k`` 0 by default: random weights almost never rank
    the original word among their top predictions, so the masked-LM rank check would leave every
    word unchanged and the arms would time less work than real models do.  The fact guard runs
    as configured by default (on every variant)."""
    from augment.config import load_augment_config

    route = {"forward": marian, "backward": marian}
    return load_augment_config({"augment": {
        "groups": {"domain": ["medical"]}, "rates": {"domain": {"back_translation": 1, "masked_lm": 1, "entity_swap": 1}},
        "batch_docs": 64, "device": "cpu", "dtype": dtype,
        "back_translation": {"routes": {"zh": route, "en": route}, "num_beams": 1, "max_new_tokens": max_new_tokens, "batch_sentences": 32},
        "masked_lm": {"models": {"zh": bert, "en": bert}, "batch_sentences": 32, "original_top_k": original_top_k},
        "entity_swap": {"knowledge_graph": [str(DATA / "augment_kg.csv")]}}})


def per_sentence_back_translation(config, docs) -> int:
    """Baseline: one generate call per sentence, forward then backward (nlpaug-style)."""
    import torch

    from augment.backtranslate import translatable
    from augment.models import load_model
    from augment.sentences import rebuild, split_sentences

    cfg = config.back_translation
    made = 0
    for doc in docs:
        route = cfg.routes[doc.lang]
        (ft, fm), (bt, bm) = (load_model("seq2seq", p, "cpu", "float32") for p in (route.forward, route.backward))
        spans = split_sentences(doc.text, cfg.max_sentence_chars)
        out = []
        for s, e in spans:
            sentence = doc.text[s:e]
            if not translatable(sentence, doc.lang):
                out.append(sentence)
                continue
            for tok, model in ((ft, fm), (bt, bm)):
                enc = tok([sentence], return_tensors="pt", truncation=True, max_length=cfg.max_input_tokens)
                with torch.inference_mode():
                    ids = model.generate(**enc, max_new_tokens=min(cfg.max_new_tokens, int(enc["input_ids"].shape[1] * 1.5) + 10), num_beams=1, do_sample=False)
                sentence = tok.batch_decode(ids, skip_special_tokens=True)[0].strip()
            out.append(sentence)
        made += bool(rebuild(doc.text, spans, out))
    return made


def per_sentence_masked_lm(config, docs, one_mask_per_row: bool = True) -> int:
    """Baseline: the same words chosen, one fill-mask call per sentence.

    ``one_mask_per_row`` (TextAttack ``WordSwapMaskedLM`` / nlpaug ``ContextualWordEmbsAug``):
    the call holds one copy of the sentence per chosen word, each with only that word masked,
    tokenised in one call; top-k is taken at the masked positions of the model's full logits.
    Otherwise the call holds the sentence once with all its chosen words masked (the same
    masking as jinglian, without cross-sentence batching or the masked-positions-only head).
    Word choice (jieba, entities) and candidate filtering are jinglian's own, shared by both arms."""
    import random

    import torch

    from augment.lineage import derive_seed
    from augment.mlm import MaskedLMAugmenter, _Row, choose_fill, encode_rows, interchangeable, substitute, vocab_table

    aug = MaskedLMAugmenter(config)
    cfg = config.masked_lm
    made = 0
    for i, doc in enumerate(docs):
        tokenizer, model = aug.model_for(doc.lang)
        table = vocab_table(tokenizer)
        rows = aug.plan_rows(i, doc, 1)
        for row in rows:
            rng = random.Random(derive_seed(config.seed, doc.id, "masked_lm", 0, row.span[0]))
            singles = [_Row(i, 0, row.span, row.sentence, [w]) for w in row.words] if one_mask_per_row else [row]
            encode_rows(singles, tokenizer, cfg.max_input_tokens)  # same length: no padding
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([r.input_ids for r in singles])).logits
            row.fills = []
            for k, single in enumerate(singles):
                for w, g, original in zip(single.words, single.mask_groups, single.original_ids):
                    top = torch.topk(logits[k, g], k=max(cfg.top_k * 4, cfg.original_top_k), dim=-1).indices.tolist() if g else None
                    keep = g and interchangeable(original, top, cfg.original_top_k)
                    row.fills.append(choose_fill(w, top, table, aug.stop_words, cfg.top_k, rng) if keep else None)
        made += bool(rows and substitute(doc.text, rows)[0])
    return made


def resolve(config) -> str:
    """The torch dtype a config's models run in on CPU, as text."""
    from augment.models import resolve_dtype

    return str(resolve_dtype(config.dtype, "cpu")).replace("torch.", "")


def timed(fn, *args) -> tuple[float, int]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


BERT_SIZES = {
    "small": {"hidden": 256, "layers": 4, "heads": 4, "intermediate": 1024, "vocab_size": 8000, "model_vocab_size": None,
              "note": "hidden 256, 4 layers, 4 heads, FFN 1024, vocab 8000 (random)"},
    "base": {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "vocab_size": 21128, "model_vocab_size": 21128,
             "note": "bert-base-chinese shape: hidden 768, 12 layers, 12 heads, FFN 3072, vocab 21128 "
                     "(WordPiece trained to ~18k tokens on tests/data, embeddings and head padded to 21128; random)"},
}


def fresh_copies(docs):
    return [type(d)(d.id, d.text, d.source, d.domain, d.lang, dict(d.meta)) for d in docs]


def measure(batched, baselines: dict, repeats: int) -> tuple[float, list, dict[str, float]]:
    """Best-of-``repeats`` seconds of ``batched`` and each baseline, runs interleaved (a shared
    machine's load hits every arm alike) after one warm-up run of each (jieba, tokenizers, kernels)."""
    out = batched()
    for fn in baselines.values():
        fn()
    t_batched, t_base = float("inf"), {name: float("inf") for name in baselines}
    for _ in range(repeats):
        t, out = timed(batched)
        t_batched = min(t_batched, t)
        for name, fn in baselines.items():
            t_base[name] = min(t_base[name], timed(fn)[0])
    return t_batched, out, t_base


def report_row(num_docs: int, t_batched: float, out, t_base: float | None) -> dict:
    row = {"batched_s": round(t_batched, 3), "batched_docs_per_s": round(num_docs / t_batched, 2),
           "variants": sum(1 for d in out if d.meta.get("augment"))}
    if t_base is not None:
        row.update(per_sentence_s=round(t_base, 3), per_sentence_docs_per_s=round(num_docs / t_base, 2), speedup=round(t_base / t_batched, 2))
    return row


def size_header(docs) -> dict:
    from augment.sentences import split_sentences

    return {"docs": len(docs), "sentences": sum(len(split_sentences(d.text, 300)) for d in docs), "chars": sum(len(d.text) for d in docs)}


def run_masked_lm(config, base_config, docs, repeats: int) -> dict:
    """jinglian's masked-LM augmenter (its ``dtype``) against both per-sentence baselines (fp32,
    as the libraries run on CPU), interleaved; plus jinglian in fp32 against the first baseline
    when its dtype is another, so the batching gain is also shown at equal precision."""
    import dataclasses

    from augment.mlm import MaskedLMAugmenter

    baselines = {"one_row_per_word": lambda: per_sentence_masked_lm(base_config, fresh_copies(docs)),
                 "all_masks_per_sentence": lambda: per_sentence_masked_lm(base_config, fresh_copies(docs), False)}
    same_dtype = resolve(config) == resolve(base_config)
    if not same_dtype:
        fp32 = dataclasses.replace(config, dtype=base_config.dtype)
        baselines["jinglian_fp32"] = lambda: MaskedLMAugmenter(fp32)(fresh_copies(docs))
    t_batched, out, t_base = measure(lambda: MaskedLMAugmenter(config)(fresh_copies(docs)), baselines, repeats)
    result = {"masked_lm": report_row(len(docs), t_batched, out, t_base["one_row_per_word"]),
              "masked_lm_vs_all_masks_per_sentence": report_row(len(docs), t_batched, out, t_base["all_masks_per_sentence"])}
    if not same_dtype:
        result["masked_lm_fp32_vs_one_row_per_word"] = report_row(len(docs), t_base["jinglian_fp32"], out, t_base["one_row_per_word"])
    for name, row in result.items():
        print(f"  {name:17s} {json.dumps(row)}", flush=True)
    return result


def run_size(config, base_config, docs, repeats: int) -> dict:
    from augment.backtranslate import BackTranslationAugmenter
    from augment.entity_swap import EntitySwapAugmenter

    result = size_header(docs)
    t_batched, out, t_base = measure(lambda: BackTranslationAugmenter(config)(fresh_copies(docs)),
                                     {"bt": lambda: per_sentence_back_translation(base_config, fresh_copies(docs))}, repeats)
    result["back_translation"] = report_row(len(docs), t_batched, out, t_base["bt"])
    print(f"  {'back_translation':17s} {json.dumps(result['back_translation'])}", flush=True)
    result.update(run_masked_lm(config, base_config, docs, repeats))
    t_batched, out, _ = measure(lambda: EntitySwapAugmenter(config)(fresh_copies(docs)), {}, repeats)
    result["entity_swap"] = report_row(len(docs), t_batched, out, None)
    print(f"  {'entity_swap':17s} {json.dumps(result['entity_swap'])}", flush=True)
    return result


def build_bert(tmp: Path, texts: list[str], size: str) -> str:
    from augment.tiny import build_tiny_bert

    spec = BERT_SIZES[size]
    return build_tiny_bert(tmp / f"bert-{size}", texts, hidden=spec["hidden"], layers=spec["layers"], vocab_size=spec["vocab_size"],
                           heads=spec["heads"], intermediate=spec["intermediate"], model_vocab_size=spec["model_vocab_size"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.augment", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[16, 32], help="input sizes (documents)")
    parser.add_argument("--max-chars", type=int, default=240, help="characters kept per document")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generated tokens per sentence (both arms)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both arms (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per arm (best kept)")
    parser.add_argument("--bert-sizes", nargs="+", choices=sorted(BERT_SIZES), default=["small", "base"],
                        help="masked-LM model sizes: small runs with every method at --docs; base (bert-base-chinese shape) "
                             "runs the masked-LM arms only, at --base-docs")
    parser.add_argument("--base-docs", type=int, nargs="+", default=[8, 16], help="input sizes (documents) for the base-size BERT")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="jinglian's augment.dtype (auto: bf16 on CPUs with native bf16, else fp32); baselines always run "
                             "fp32, as nlpaug and TextAttack do on CPU")
    parser.add_argument("--original-top-k", type=int, default=0,
                        help="masked_lm.original_top_k for jinglian and the baselines (0: no rank check; random weights "
                             "almost never rank the original word in their top k)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "augment.json"), help="results JSON")
    args = parser.parse_args(argv)

    import torch

    from augment.models import load_model
    from augment.tiny import build_tiny_marian, read_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="jinglian-bench-augment-"))
    try:
        texts = read_texts([DATA / n for n in ("general_zh.jsonl", "general_en.jsonl", "domain_medical.jsonl", "expert.jsonl")], 3000)
        marian = build_tiny_marian(tmp / "marian", texts, d_model=256, layers=3, vocab_size=8000, ffn_dim=1024, heads=4)
        berts = {size: build_bert(tmp, texts, size) for size in args.bert_sizes}
        for path in [marian, *berts.values()]:  # load outside the timings
            for dtype in {args.dtype, "float32"}:
                load_model("masked_lm" if "bert" in Path(path).name else "seq2seq", path, "cpu", dtype)
        results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "device": "cpu", "load_avg_1m": os.getloadavg()[0]},
                   "models": {"marian": "d_model 256, 3+3 layers, ffn 1024, vocab 8000 (random)",
                              **{f"bert_{size}": BERT_SIZES[size]["note"] for size in berts}},
                   "settings": {"jinglian_dtype": resolve(config_for(marian, marian, 1, args.dtype)), "baseline_dtype": "float32",
                                "repeats": args.repeats, "masked_lm_original_top_k": args.original_top_k, "fact_guard": "on (params defaults)",
                                "max_new_tokens": args.max_new_tokens, "num_beams": 1, "batch_sentences": 32, "max_chars_per_doc": args.max_chars},
                   "sizes": []}
        if "small" in berts:
            config = config_for(marian, berts["small"], args.max_new_tokens, args.dtype, args.original_top_k)
            base_config = config_for(marian, berts["small"], args.max_new_tokens, "float32", args.original_top_k)
            for n in args.docs:
                print(f"size {n} docs (BERT small)", flush=True)
                results["sizes"].append(run_size(config, base_config, load_docs(n, args.max_chars), args.repeats))
        if "base" in berts:
            config = config_for(marian, berts["base"], args.max_new_tokens, args.dtype, args.original_top_k)
            base_config = config_for(marian, berts["base"], args.max_new_tokens, "float32", args.original_top_k)
            results["masked_lm_bert_base"] = []
            for n in args.base_docs:
                print(f"size {n} docs (BERT base, masked-LM only)", flush=True)
                docs = load_docs(n, args.max_chars)
                results["masked_lm_bert_base"].append({**size_header(docs), **run_masked_lm(config, base_config, docs, args.repeats)})
        results["load_avg_1m_end"] = os.getloadavg()[0]
        results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the base-size BERT is ~400 MB
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
