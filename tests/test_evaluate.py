"""Evaluation on CPU with tiny real models: KV-cache decoding, per-domain loss, probes, the
evaluate CLI's outputs, character noise, and the lm-evaluation-harness task."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from hf_tiny import make_model, make_tokenizer

from augment.noise import char_noise
from shards.build import build_local
from shards.config import ShardsConfig

KG = """entity,type,aliases
liver,organ,hepar
kidney,organ,renal organ
heart,organ,cardiac organ
aspirin,drug,acetylsalicylic acid
insulin,drug,humulin
"""
FACTS = ["hepar, also called liver", "renal organ, also called kidney", "cardiac organ, also called heart",
         "acetylsalicylic acid, also called aspirin", "humulin, also called insulin"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tokenizer, a tiny llama and qwen2 (random weights), a shard set with a validation split."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = make_tokenizer(root / "tokenizer")
    llama = make_model("llama", root / "llama", tokenizer=tokenizer)
    qwen = make_model("qwen2", root / "qwen2", tokenizer=tokenizer, seed=1)
    corpus = root / "corpus"
    for group, texts in (("general", ["the liver filters blood and stores energy", "data parallel copies the model"]),
                         ("domain", ["肝脏过滤血液", "continued pretraining keeps the tokenizer"])):
        (corpus / group).mkdir(parents=True)
        with open(corpus / group / "part.jsonl", "w", encoding="utf-8") as handle:
            for i in range(40):
                handle.write(json.dumps({"id": f"{group}-{i}", "text": f"{texts[i % 2]} {i}", "domain": group}) + "\n")
    shards = root / "shards"
    build_local([f"{g}={corpus / g}" for g in ("general", "domain")], str(shards),
                ShardsConfig(weights={"general": 1, "domain": 1}, samples_per_shard=8, valid_fraction=0.3), {},
                tokenizer_path=str(tokenizer))
    (root / "kg.csv").write_text(KG, encoding="utf-8")
    return {"root": root, "llama": llama, "qwen2": qwen, "valid": shards / "valid", "kg": root / "kg.csv"}


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_kv_cache_decoding_equals_recomputation(tiny, kind):
    from trainer.generate import greedy_decode, measure_speed

    model, _ = _load(tiny[kind])
    prompts = [[5, 17, 42, 99, 3], [7, 8], [120, 4, 4, 4, 4, 4, 9, 250]]
    cached = greedy_decode(model, prompts, 12)
    assert cached == greedy_decode(model, prompts, 12, use_cache=False)
    assert all(len(r) == 12 for r in cached)
    # a left-padded prompt decodes as it does alone
    assert [greedy_decode(model, [p], 12)[0] for p in prompts] == cached
    # the same greedy tokens transformers' own generate() makes
    ids = torch.tensor([prompts[0]])
    reference = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert reference[0, len(prompts[0]):].tolist() == cached[0]
    speed = measure_speed(model, prompts, 4, 2)
    assert speed.new_tokens == 12 and speed.tokens_per_s > 0


def test_domain_losses_equal_a_direct_computation(tiny):
    from trainer.evaluate import documents_of_rows, domain_losses
    from trainer.validation import read_rows

    model, _ = _load(tiny["llama"])
    rows, domains = read_rows(str(tiny["valid"]), 16, seq_len=24, seed=0, shuffle_buffer=64)
    docs = documents_of_rows(rows)
    got = domain_losses(model, docs, domains, batch_size=3)
    sums, counts = {}, {}
    with torch.no_grad():
        for tokens, labels, mask, domain in docs:  # one document at a time, no padding
            logits = model(input_ids=torch.as_tensor(tokens)[None]).logits[0]
            nll = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels), reduction="none")
            name = domains[domain]
            sums[name] = sums.get(name, 0.0) + float((nll * torch.as_tensor(mask)).sum())
            counts[name] = counts.get(name, 0) + int(mask.sum())
    assert set(got["loss"]) == set(sums) == {"general", "domain"}
    for name in sums:
        assert got["loss"][name] == pytest.approx(sums[name] / counts[name], rel=1e-5)
        assert got["tokens"][name] == counts[name]


def test_probes_from_a_hand_made_graph(tiny, tmp_path):
    from trainer.probes import load_probes, probe_figures, score_probes

    probes, surfaces = load_probes(tiny["kg"])
    assert [(p.prompt, p.answer, p.candidates) for p in probes[:2]] == [
        ("hepar, also called", "liver", ("liver", "kidney", "heart")),
        ("renal organ, also called", "kidney", ("liver", "kidney", "heart"))]
    assert len(probes) == 5 and surfaces["aspirin"] == ("aspirin", "acetylsalicylic acid")
    triples = tmp_path / "triples.csv"
    triples.write_text("head,relation,tail\n肝脏,功能,过滤血液\n心脏,功能,泵血\nliver,color,red\n", encoding="utf-8")
    tprobes, _ = load_probes(triples)
    assert [(p.prompt, p.delimiter, p.candidates) for p in tprobes] == [
        ("肝脏的功能是", "", ("过滤血液", "泵血")), ("心脏的功能是", "", ("过滤血液", "泵血"))]  # one colour: no probe
    model, tok = _load(tiny["llama"])
    before = score_probes(model, tok, probes)
    for r, p in zip(before, probes):
        assert 1 <= r["rank"] <= len(p.candidates) and r["predicted"] in p.candidates
        assert (r["rank"] == 1) == (r["predicted"] == p.answer)
    # teach the tiny model the graph's facts: every probe must then rank its entity first
    ids = [tok(text)["input_ids"] for text in FACTS]
    width = max(map(len, ids))
    batch = torch.tensor([seq + [0] * (width - len(seq)) for seq in ids])
    mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in ids])
    labels = batch.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        model(input_ids=batch, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after = probe_figures(score_probes(model, tok, probes))
    assert after == {"num_probes": 5, "num_entities": 5, "accuracy": 1.0, "entity_recall": 1.0, "mrr": 1.0}


def test_char_noise_keeps_entities_and_is_seeded():
    text = "hepar, also called the liver"
    noisy = char_noise(text, random.Random(3), rate=0.3, protect=["hepar", "liver"])
    assert noisy != text and noisy.startswith("hepar") and noisy.endswith("liver")
    assert noisy == char_noise(text, random.Random(3), rate=0.3, protect=["hepar", "liver"])
    assert char_noise("liver", random.Random(0), protect=["liver"]) == "liver"


def test_alias_substitution_keeps_the_entity():
    from trainer.probes import Probe, alias_substitution

    surfaces = {"liver": ("liver", "hepar", "肝脏"), "heart": ("heart", "cardiac organ")}
    probe = Probe("liver/alias0", "hepar, also called", "liver", ("liver", "heart"), " ", ("hepar",), "alias")
    swapped = alias_substitution(probe, random.Random(0), surfaces)
    assert (swapped.prompt, swapped.delimiter, swapped.entities) == ("肝脏，也叫", "", ("肝脏",))
    triple = Probe("line2", "The colour of heart is", "red", ("red", "blue"), " ", ("heart",))
    assert alias_substitution(triple, random.Random(0), surfaces).prompt == "The colour of cardiac organ is"


def test_evaluate_writes_json_and_markdown_keyed_by_groups(tiny, tmp_path):
    from trainer.evaluate import main
    from trainer.hf import import_hf

    ckpt = tmp_path / "ckpt"
    import_hf(str(tiny["llama"]), ckpt, seq_len=64)
    out = tmp_path / "eval"
    assert main(["--load", str(ckpt), "--shards", str(tiny["valid"]), "--out", str(out), "--probes", str(tiny["kg"]),
                 "--baseline", str(tiny["qwen2"]), "--seq-len", "24", "--max-rows", "8", "--gen-tokens", "4",
                 "--gen-batch", "2"]) == 0
    report = json.loads((out / "eval.json").read_text())
    manifest = json.loads((tiny["valid"] / "manifest.json").read_text())
    assert set(report["model"]["perplexity"]) == set(manifest["groups"]) == {"general", "domain"}
    assert set(report["baseline"]["perplexity"]) == set(manifest["groups"])
    assert report["model"]["perplexity"] != report["baseline"]["perplexity"]
    assert [c["figure"] for c in report["checks"]] == ["probe_accuracy", "entity_recall", "tokens_per_s", "attack_success"]
    robust = report["model"]["robustness"]
    # one alias per entity: no other surface to swap in (an alias probe never gets its answer)
    assert robust["alias"]["changed"] == 0 and 0 < robust["char_noise"]["changed"] <= 5  # an edit may be a no-op (swap of equal letters)
    assert 0 <= robust["all"]["attack_success"] <= 1
    md = (out / "eval.md").read_text()
    assert "| task accuracy (knowledge probes) |" in md and ">= 85.0%" in md and "| general |" in md
    for png in ("perplexity.png", "probes.png", "speed.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in md


def test_lm_eval_runs_the_probe_task_offline(tiny, tmp_path):
    pytest.importorskip("lm_eval")
    from trainer.evaluate import write_lm_eval_task
    from trainer.probes import load_probes, probe_figures, score_probes

    task_dir = tmp_path / "task"
    write_lm_eval_task(str(tiny["kg"]), str(task_dir), "jl_probes")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "ds-cache"), HF_HOME=str(tmp_path / "hf-home"))
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                          f"pretrained={tiny['llama']},dtype=float32", "--tasks", "jl_probes", "--include_path",
                          str(task_dir), "--device", "cpu", "--batch_size", "4", "--output_path", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out.rglob("results_*.json")]
    assert results, run.stdout[-2000:]
    acc = results[0]["results"]["jl_probes"]["acc,none"]
    model, tok = _load(tiny["llama"])
    probes, _ = load_probes(tiny["kg"])
    assert acc == pytest.approx(probe_figures(score_probes(model, tok, probes))["accuracy"])
