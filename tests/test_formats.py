"""Formats users already have: ShareGPT and OpenAI/HF chat records, the guide's knowledge
records, field mappings, per-input domains, and the tokenizer's chat template in the shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from etl.clean.pipeline import main as clean_main
from etl.core.config import build_config
from etl.io.dialogue import chat_turns
from etl.io.records import ReaderConfig, read_inputs, read_parquet_dir

ROOT = Path(__file__).resolve().parent.parent
#: A real paragraph (US State of the Union 1900, public domain: tests/data/NOTICE).
PARAGRAPH = json.loads((ROOT / "tests" / "data" / "general_en.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]

SHAREGPT = {"id": "sg-1", "conversations": [
    {"from": "system", "value": "You are a careful physician."},
    {"from": "human", "value": "What does the liver do?"},
    {"from": "gpt", "value": "The liver filters blood and stores glycogen."},
    {"from": "human", "value": "And the kidneys?"},
    {"from": "gpt", "value": "They filter blood into urine."}]}
MESSAGES = {"id": "oa-1", "domain": "medical", "messages": [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": [{"type": "text", "text": "Name the largest organ."}]},
    {"role": "assistant", "content": "The skin."},
    {"role": "user", "content": "Inside the body?"},
    {"role": "assistant", "content": "The liver."}]}
MALFORMED = [
    {"id": "bad-content", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
    {"id": "image-part", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                                      {"role": "assistant", "content": "ok"}]},
    {"id": "unknown-role", "conversations": [{"from": "narrator", "value": "Once"}, {"from": "gpt", "value": "upon"}]},
    {"id": "empty-turn", "conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "answer"}]},
    {"id": "not-a-list", "messages": "hello"},
    {"id": "turn-not-object", "conversations": ["human: hi", "gpt: hello"]},
]
KNOWLEDGE = {"knowledge_id": "K001", "text": PARAGRAPH, "metadata": {"source": "学术论文", "domain": "计算机科学"}}


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _clean(tmp_path, inputs, params: str | None = None):
    args = ["--input", *map(str, inputs), "--output", str(tmp_path / "out"), "--no-progress"]
    if params:
        p = tmp_path / "params.yaml"
        p.write_text(params)
        args += ["--params", str(p)]
    report = clean_main(args)
    kept = {d.id: d for d in read_parquet_dir(tmp_path / "out" / "kept")}
    rejected = {d.id: d for d in read_parquet_dir(tmp_path / "out" / "rejected")}
    return report, kept, rejected


def test_chat_turns_maps_sharegpt_and_openai_roles():
    turns, fmt, reason, _ = chat_turns(SHAREGPT)
    assert fmt == "sharegpt" and reason is None
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert turns[1]["source_role"] == "human" and turns[2]["text"].startswith("The liver")
    turns, fmt, reason, _ = chat_turns(MESSAGES)
    assert fmt == "messages" and turns[1]["text"] == "Name the largest organ." and "source_role" not in turns[1]
    assert chat_turns({"conversations": [{"from": "GPT", "value": "x"}]})[0][0]["role"] == "assistant"  # case-insensitive


def test_chat_records_become_dialogue_trees_with_segments_and_malformed_ones_are_rejected(tmp_path):
    src = _jsonl(tmp_path / "chat.jsonl", [SHAREGPT, MESSAGES, *MALFORMED])
    report, kept, rejected = _clean(tmp_path, [src])
    assert report["num_in"] == 8 and len(kept) + len(rejected) == 8
    assert set(kept) == {"sg-1", "oa-1"}
    for doc in kept.values():
        segs = doc.meta["segments"]
        assert segs[0][0] == 0 and segs[-1][1] == len(doc.text)
        responses = [doc.text[a:b] for a, b, kind in segs if kind == "response"]
        assert doc.meta["format"] == "dialogue" and "messages" not in doc.meta and "conversations" not in doc.meta
        assert all(n["side"] in ("prompt", "response") for n in doc.meta["dialogue"])
        assert len(responses) == 2
    assert kept["sg-1"].meta["source_format"] == "sharegpt" and kept["oa-1"].meta["source_format"] == "messages"
    sg = kept["sg-1"]
    assert [sg.text[a:b] for a, b, k in sg.meta["segments"] if k == "response"][0].startswith("The liver filters blood")
    assert sg.text.startswith("system: You are a careful physician.\nuser: What does the liver do?")
    assert kept["oa-1"].domain == "medical"
    reasons = {i: (d.drop_reason, d.meta.get("error", "")) for i, d in rejected.items()}
    assert reasons["bad-content"][0] == "dialogue_bad_turn" and "messages[1].content" in reasons["bad-content"][1]
    assert reasons["image-part"][0] == "dialogue_bad_turn" and "non-text parts" in reasons["image-part"][1]
    assert reasons["unknown-role"][0] == "dialogue_unknown_role"
    assert reasons["empty-turn"][0] == "dialogue_empty_turn"
    assert reasons["not-a-list"][0] == "dialogue_no_turns"
    assert reasons["turn-not-object"][0] == "dialogue_bad_turn"


def test_alternation_is_checked_on_chat_records(tmp_path):
    twice = {"id": "twice", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                         {"role": "assistant", "content": "c"}]}
    src = _jsonl(tmp_path / "c.jsonl", [twice])
    _, kept, rejected = _clean(tmp_path, [src], "clean:\n  dialogue:\n    require_alternation: true\n")
    assert not kept and rejected["twice"].drop_reason == "dialogue_not_alternating"


def test_the_guides_knowledge_record_keeps_its_id_source_and_domain(tmp_path):
    src = _jsonl(tmp_path / "k.jsonl", [KNOWLEDGE])
    docs = list(read_inputs([src]))
    assert [(d.id, d.source, d.domain) for d in docs] == [("K001", "学术论文", "计算机科学")]
    assert docs[0].meta["knowledge_id"] == "K001" and docs[0].meta["metadata"]["domain"] == "计算机科学"


def test_field_mapping_and_a_missing_mapped_field_is_rejected(tmp_path):
    src = _jsonl(tmp_path / "m.jsonl", [
        {"uid": 7, "body": PARAGRAPH, "info": {"topic": "history", "origin": "sotu"}},
        {"uid": 8, "body": PARAGRAPH, "info": {"origin": "sotu"}},  # no topic
        {"body": PARAGRAPH, "info": {"topic": "history"}},  # no uid
    ])
    config = build_config(ReaderConfig, {"fields": {"id": "uid", "text": "body", "domain": "info.topic", "source": "info.origin"}}, "read")
    docs = list(read_inputs([src], config))
    assert (docs[0].id, docs[0].text[:20], docs[0].domain, docs[0].source) == ("7", PARAGRAPH[:20], "history", "sotu")
    assert docs[1].drop_reason == "missing_field" and docs[1].id == "m.jsonl:2" and "info.topic" in docs[1].meta["error"]
    assert docs[1].meta["field"] == "info.topic" and json.loads(docs[1].text)["uid"] == 8  # the raw line is kept
    assert docs[2].drop_reason == "missing_field" and "'uid'" in docs[2].meta["error"]
    with pytest.raises(ValueError, match="read.fields: unknown field"):
        build_config(ReaderConfig, {"fields": {"title": "x"}}, "read")
    report, kept, rejected = _clean(tmp_path, [src], "read:\n  fields: {id: uid, text: body, domain: info.topic}\n")
    assert report["num_in"] == 3 and set(kept) | set(rejected) == {"7", "m.jsonl:2", "m.jsonl:3"}
    assert report["drop_reasons"]["missing_field"] == 2


def test_a_per_input_domain_labels_records_without_one(tmp_path):
    med = _jsonl(tmp_path / "med" / "a.jsonl", [{"id": "m1", "text": PARAGRAPH}, {"id": "m2", "text": PARAGRAPH, "domain": "legal"}])
    gen = _jsonl(tmp_path / "gen" / "b.jsonl", [{"id": "g1", "text": PARAGRAPH}])
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "note.txt").write_text(PARAGRAPH)
    docs = {d.id: d.domain for d in read_inputs([f"medical={med.parent}", str(gen), f"expert={tmp_path / 'txt'}"])}
    assert docs == {"m1": "medical", "m2": "legal", "g1": "general", "txt/note.txt": "expert"}


@pytest.mark.spark
def test_spark_reads_the_formats_like_local(spark, tmp_path):
    from spark_jobs.clean import main as spark_main

    src = _jsonl(tmp_path / "in" / "chat.jsonl", [SHAREGPT, MESSAGES, *MALFORMED, KNOWLEDGE])
    lab = _jsonl(tmp_path / "lab" / "x.jsonl", [{"id": "x1", "text": PARAGRAPH}])
    inputs = [str(src), f"medical={lab.parent}"]
    spark_report = spark_main(["--input", *inputs, "--output", str(tmp_path / "spark")])
    local_report = clean_main(["--input", *inputs, "--output", str(tmp_path / "local"), "--no-progress"])

    def view(root):
        return sorted((d.id, d.domain, d.text, d.drop_reason) for name in ("kept", "rejected") for d in read_parquet_dir(root / name))

    assert view(tmp_path / "spark") == view(tmp_path / "local")
    assert spark_report["num_in"] == local_report["num_in"] == 10
    assert {d.id: d.domain for d in read_parquet_dir(tmp_path / "spark" / "kept")}["x1"] == "medical"


# ----------------------------------------------------------------------------- chat templates

QWEN_STYLE = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
              "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
              "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3_STYLE = ("{{- bos_token }}{%- for m in messages %}"
                "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory, data_dir):
    from shards.tokenizer import train_bpe_tokenizer

    texts = [json.loads(line).get("text", "") for line in open(data_dir / "general_en.jsonl", encoding="utf-8")][:100]
    texts += [m["value"] for m in SHAREGPT["conversations"]] * 5
    return train_bpe_tokenizer(texts, 600, tmp_path_factory.mktemp("tok"))


def _templated(base, out: Path, template: str, specials: list[str], bos: str | None = None) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    tok.add_special_tokens({"additional_special_tokens": specials} | ({"bos_token": bos} if bos else {}))
    tok.chat_template = template
    tok.save_pretrained(str(out))
    return out


def _shards(tmp_path, tokenizer: Path, records, chat_template: str = "auto"):
    from shards.build import build_local
    from shards.config import ShardsConfig
    from shards.tario import iter_shard, load_npy

    src = _jsonl(tmp_path / "sft" / "r.jsonl", records)
    out = tmp_path / f"shards-{tokenizer.name}-{chat_template}"
    cfg = ShardsConfig(samples_per_shard=1, min_shards=1, max_doc_tokens=0, chat_template=chat_template, weights={"domain": 1})
    manifest = build_local([f"domain={src}"], str(out), cfg, {}, tokenizer_path=str(tokenizer))
    samples = {}
    for entry in manifest["shards"]:
        for key, members in iter_shard(out / entry["name"]):
            meta = json.loads(members["json"])
            samples[meta["id"]] = (load_npy(members["npy"], key).astype(np.int64),
                                   load_npy(members["mask.npy"], key) if "mask.npy" in members else None)
    return manifest, samples


def _runs(tok, ids, mask) -> list[str]:
    """The decoded runs of consecutive target tokens."""
    runs, cur = [], []
    for i, m in zip(ids.tolist(), mask.tolist()):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.parametrize("style", ["qwen", "llama3"])
def test_sft_records_are_rendered_with_the_tokenizers_chat_template(tmp_path, base_tokenizer, style):
    from transformers import AutoTokenizer

    if style == "qwen":
        tok_dir = _templated(base_tokenizer, tmp_path / "qwen", QWEN_STYLE, ["<|im_start|>", "<|im_end|>"])
        end = "<|im_end|>"
    else:
        tok_dir = _templated(base_tokenizer, tmp_path / "llama3", LLAMA3_STYLE,
                             ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], bos="<|begin_of_text|>")
        end = "<|eot_id|>"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    instruction = {"id": "ins-1", "instruction": "Name the organ that filters blood.", "input": "An adult patient.",
                   "output": "The kidney."}
    _, samples = _shards(tmp_path, tok_dir, [SHAREGPT, MESSAGES, instruction])
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    for doc_id, answers in (("sg-1", ["The liver filters blood and stores glycogen.", "They filter blood into urine."]),
                            ("oa-1", ["The skin.", "The liver."]), ("ins-1", ["The kidney."])):
        ids, mask = samples[doc_id]
        text = tok.decode(ids.tolist())
        expected_messages = {"sg-1": [{"role": "system", "content": "You are a careful physician."}], "oa-1": [], "ins-1": []}[doc_id]
        assert ("<|im_start|>user\n" if style == "qwen" else "<|start_header_id|>user<|end_header_id|>") in text
        if expected_messages:
            assert "careful physician" in text and "You are a helpful assistant" not in text
        runs = _runs(tok, ids[:-1], mask[:-1])  # the appended EOS is a target too (learn to stop)
        assert runs == [a + end for a in answers], (doc_id, runs)
        assert ids[-1] == eos and mask[-1] == 1
    assert "user: " not in tok.decode(samples["sg-1"][0].tolist())  # not the project's default template


def test_without_a_template_the_default_template_is_kept_and_tokenizer_mode_requires_one(tmp_path, base_tokenizer):
    from transformers import AutoTokenizer

    _, samples = _shards(tmp_path, Path(base_tokenizer), [SHAREGPT])
    tok = AutoTokenizer.from_pretrained(str(base_tokenizer))
    ids, mask = samples["sg-1"]
    assert tok.decode(ids.tolist()).startswith("system: You are a careful physician.\nuser: What does the liver do?")
    assert _runs(tok, ids[:-1], mask[:-1])[0].strip().startswith("The liver filters blood")  # " The": the space rides with the word
    with pytest.raises(ValueError, match="has no chat template"):
        _shards(tmp_path, Path(base_tokenizer), [SHAREGPT], chat_template="tokenizer")
    qwen = _templated(base_tokenizer, tmp_path / "q", QWEN_STYLE, ["<|im_start|>", "<|im_end|>"])
    _, samples = _shards(tmp_path, qwen, [SHAREGPT], chat_template="default")
    assert "<|im_start|>" not in AutoTokenizer.from_pretrained(str(qwen)).decode(samples["sg-1"][0].tolist())


def test_a_template_that_cannot_mark_assistant_spans_rejects_the_record(tmp_path, base_tokenizer):
    # the assistant's text is rewritten by the template: its span cannot be found, so no mask is guessed
    shouting = "{%- for m in messages %}{{- m['role'] + ': ' + m['content'] | upper + '\\n' }}{%- endfor %}"
    tok_dir = _templated(base_tokenizer, tmp_path / "shout", shouting, [])
    manifest, samples = _shards(tmp_path, tok_dir, [SHAREGPT, {"id": "plain", "text": PARAGRAPH}])
    assert manifest["rejected_reasons"] == {"chat_template_mismatch": 1} and set(samples) == {"plain"}
