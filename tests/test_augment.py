"""Augment stage: sentence spans, guard, masking rules, consistent entity swaps, lineage, determinism.

Models are tiny random-weight Marian and BERT built from configs with tokenizers trained on
tests/data, so the outputs are gibberish but every mechanic is the real one.
"""
from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from augment.config import (
    GuardConfig,  # noqa: E402
    load_augment_config,  # noqa: E402
)
from augment.entity_swap import EntityFinder, EntitySwapAugmenter, KnowledgeGraph  # noqa: E402
from augment.guard import bigram_similarity, check_variant  # noqa: E402
from augment.lineage import num_variants  # noqa: E402
from augment.mlm import MaskedLMAugmenter, _Row, eligible_words, encode_row, load_stop_words  # noqa: E402
from augment.pipeline import AugmentStats, build_pipeline  # noqa: E402
from augment.sentences import rebuild, split_sentences  # noqa: E402
from augment.words import pos_tokenizer, segment  # noqa: E402
from etl.core.document import Document  # noqa: E402


def _docs(data_dir, name, n, max_chars=160):
    """The first ``n`` records, cut after the first sentence end past 60 characters (fast tests)."""
    with open(data_dir / name, encoding="utf-8") as handle:
        docs = [Document.from_row(json.loads(line)) for line in handle][:n]
    for d in docs if max_chars else ():
        ends = [i for i, c in enumerate(d.text[:max_chars]) if c in "。？！.?!" and i > 60]
        d.text = d.text[:ends[0] + 1] if ends else d.text[:max_chars]
    return docs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    from augment.tiny import build_tiny_bert, build_tiny_marian, read_texts

    root = tmp_path_factory.mktemp("tiny_models")
    texts = read_texts([data_dir / "general_zh.jsonl", data_dir / "general_en.jsonl", data_dir / "domain_medical.jsonl"], 1500)
    return {"marian": build_tiny_marian(root / "marian", texts), "bert": build_tiny_bert(root / "bert", texts)}


def _params(tiny, data_dir, **overrides):
    section = {
        "groups": {"domain": ["medical"], "expert": ["science", "legal", "medical-*"]},
        "rates": {"domain": {"back_translation": 1, "masked_lm": 1, "entity_swap": 1},
                  "expert": {"back_translation": 1, "masked_lm": 2, "entity_swap": 1}},
        "back_translation": {"routes": {"zh": {"forward": tiny["marian"], "backward": tiny["marian"]},
                                        "en": {"forward": tiny["marian"], "backward": tiny["marian"]}},
                             "num_beams": 2, "max_new_tokens": 10, "batch_sentences": 8},
        # random weights almost never rank the original word in their top k: the rank check is off
        # here (tested on its own in test_masked_lm_original_rank_check)
        "masked_lm": {"models": {"zh": tiny["bert"], "en": tiny["bert"]}, "batch_sentences": 8, "original_top_k": 0},
        "entity_swap": {"knowledge_graph": [str(data_dir / "augment_kg.csv")]},
        "guard": {"back_translation": {"min_similarity": 0.0, "max_similarity": 0.95, "max_length_ratio": 20.0},
                  "masked_lm": {"min_similarity": 0.3, "max_similarity": 0.99},
                  "entity_swap": {"min_similarity": 0.3, "max_similarity": 1.0}},
    }
    section.update(overrides)
    return load_augment_config({"augment": section})


# ----------------------------------------------------------------------------- sentences


def test_sentence_spans_zh_en_rules():
    text = "他来了。She left. Dr. Li stayed!\n价格是3.5元，对吗？“好的。”然后 e.g. this stays. 最后一句"
    got = [text[s:e] for s, e in split_sentences(text)]
    assert got == ["他来了。", "She left.", "Dr. Li stayed!", "价格是3.5元，对吗？", "“好的。”", "然后 e.g. this stays.", "最后一句"]
    spans = split_sentences(text)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert rebuild(text, spans, [text[s:e] for s, e in spans]) == text


def test_long_sentence_cut_at_clause_marks():
    text = "甲" * 8 + "，" + "乙" * 8 + "，" + "丙" * 3
    got = [text[s:e] for s, e in split_sentences(text, max_chars=10)]
    assert got == ["甲" * 8 + "，", "乙" * 8 + "，", "丙" * 3]
    hard = "无" * 25
    assert [e - s for s, e in split_sentences(hard, max_chars=10)] == [10, 10, 5]


# ----------------------------------------------------------------------------- guard and lineage


def test_guard_reasons():
    cfg = GuardConfig(min_similarity=0.3, max_similarity=0.95, max_length_ratio=1.5)
    assert bigram_similarity("abc d", "ABCD") == 1.0
    assert check_variant("高血压患者能吃党参吗", "高血压患者能吃党参吗", cfg)[0] == "too_similar"
    assert check_variant("高血压患者能吃党参吗", "今天天气很好我们去公园", cfg)[0] == "too_different"
    assert check_variant("高血压患者能吃党参吗", "高血压病人能吃党参吗", cfg) == (None, {"similarity": 0.5, "length_ratio": 1.0})
    reason, detail = check_variant("高血压患者能吃党参吗", "高血压患者能吃党参吗" * 3, GuardConfig(min_similarity=0.1, max_similarity=0.99))
    assert reason == "too_different" and detail["length_ratio"] > 2


def test_rates_by_domain_group_and_fractional_rates(tiny, data_dir):
    config = _params(tiny, data_dir, rates={"domain": {"masked_lm": 1.5}, "expert": {"masked_lm": 2.0}})
    counts = [num_variants(config, Document(f"d{i}", "x", domain="medical"), "masked_lm") for i in range(400)]
    assert set(counts) == {1, 2} and 0.4 < counts.count(2) / 400 < 0.6
    assert counts == [num_variants(config, Document(f"d{i}", "y", domain="medical"), "masked_lm") for i in range(400)]
    assert num_variants(config, Document("e", "x", domain="medical-genetics"), "masked_lm") == 2
    assert num_variants(config, Document("g", "x", domain="general"), "masked_lm") == 0
    with pytest.raises(ValueError, match="rates.nosuch"):
        load_augment_config({"augment": {"rates": {"nosuch": {"masked_lm": 1}}}})
    with pytest.raises(ValueError, match="augment.masked_lm: word_fraction"):
        load_augment_config({"augment": {"masked_lm": {"word_fraction": 2}}})


# ----------------------------------------------------------------------------- entity swap


def test_entity_swap_real_text_consistent(data_dir):
    doc = next(d for d in _docs(data_dir, "general_zh.jsonl", 200, max_chars=0) if d.id == "kdconv-kb-travel-31be8277eb")
    doc.domain = "medical"
    config = load_augment_config({"augment": {"groups": {"d": ["medical"]}, "rates": {"d": {"entity_swap": 3}},
                                              "entity_swap": {"knowledge_graph": [str(data_dir / "augment_kg.csv")], "entity_fraction": 1.0,
                                                              "mode": "counterfactual"}}})
    aug = EntitySwapAugmenter(config)
    mentions = aug.finder.mentions(doc.text)
    surfaces = {m.surface for m in mentions}
    assert {"北京", "上海", "香港", "台北"} <= surfaces  # knowledge-graph places in real text
    out = aug([doc])
    assert out[0] is doc and [v.id for v in out[1:]] == [f"{doc.id}~es{i}" for i in range(3)]
    for variant in out[1:]:
        swaps = variant.meta["augment"]["params"]["swaps"]
        assert swaps and variant.meta["augment"]["parent_id"] == doc.id
        for swap in swaps:
            old = swap["from"][0]
            new = swap["to"]
            assert new not in surfaces  # never merges two entities of the document
            if old in {"北京", "上海", "香港", "台北"}:
                # every mention swapped, all to the same replacement
                assert variant.text.count(new) == doc.text.count(old) and old not in variant.text.replace(new, "")
    assert len({v.text for v in out[1:]}) > 1  # variants differ
    assert {v.meta["augment"]["params"]["mode"] for v in out[1:]} == {"counterfactual"}
    kinds = {s["kind"] for v in out[1:] for s in v.meta["augment"]["params"]["swaps"]}
    assert "counterfactual" in kinds and kinds <= {"alias", "counterfactual", "non_graph"}
    # the entities named instead are the planned ones: the fact guard keeps these variants
    assert [v.drop_reason for v in out[1:]] == [None, None, None]


def test_entity_swap_alias_and_latin_word_boundaries(data_dir):
    graph = KnowledgeGraph.load([data_dir / "augment_kg.csv"])
    assert graph.by_surface["中央处理器"].name == "CPU" and graph.by_type["place"][:2] == ["北京", "上海"]
    config = load_augment_config({"augment": {"groups": {"d": ["*"]}, "rates": {"d": {"entity_swap": 1}},
                                              "entity_swap": {"alias_prob": 1.0, "entity_fraction": 1.0}}})
    aug = EntitySwapAugmenter(config, graph)
    doc = Document("cpu1", "The CPU is fast. Two CPUs and the CPU cache; CPU again.", domain="x", lang="en")
    assert [m.start for m in aug.finder.mentions(doc.text)] == [4, 34, 45]  # not inside "CPUs"
    variant = aug([doc])[1]
    new = variant.meta["augment"]["params"]["swaps"][0]["to"]
    assert new in ("中央处理器", "central processing unit")
    assert variant.text == doc.text.replace("The CPU", f"The {new}").replace("the CPU", f"the {new}").replace("; CPU", f"; {new}")


def test_entity_swap_pos_tags_and_no_entity(data_dir):
    section = {"groups": {"d": ["*"]}, "rates": {"d": {"entity_swap": 1}}, "entity_swap": {"knowledge_graph": [str(data_dir / "augment_kg.csv")]}}
    aug = EntitySwapAugmenter(load_augment_config({"augment": section}))
    mentions = aug.finder.mentions("张伟在南宁工作，张伟很忙。")
    assert [(m.surface, m.type) for m in mentions] == [("张伟", "person"), ("南宁", "place"), ("张伟", "person")]
    doc = Document("p", "张伟在南宁工作，张伟很忙。", domain="x", lang="zh")
    assert aug([doc]) == [doc]  # alias mode: words outside the graph are never swapped, whatever their tag
    section["entity_swap"]["mode"] = "counterfactual"
    out = EntitySwapAugmenter(load_augment_config({"augment": section}))([doc])
    swaps = out[1].meta["augment"]["params"]["swaps"]
    assert [(s["from"], s["kind"]) for s in swaps] == [(["南宁"], "non_graph")] and out[1].text.count("南宁") == 0  # no person in the graph
    assert not out[1].dropped  # the graph entity named instead of 南宁 is the planned one
    assert aug([Document("n", "今天天气很好。", domain="x", lang="zh")])[1:] == []


# ----------------------------------------------------------------------------- masked LM


def test_eligible_words_exclude_stop_words_numbers_entities(data_dir):
    graph = KnowledgeGraph.load([data_dir / "augment_kg.csv"])
    config = load_augment_config({})
    finder = EntityFinder(graph, config.entity_swap)
    text = "我们在北京买了3台电脑和二十个中央处理器，价格很便宜。The doctor said 42 patients recovered."
    words = segment(text, finder.tokenizer)
    spans = [(m.start, m.end) for m in finder.mentions(text)]
    got = [w.text for w in eligible_words(words, spans, load_stop_words(()))]
    assert got == ["买", "电脑", "价格", "便宜", "doctor", "said", "patients", "recovered"]


def test_whole_word_masking_token_groups(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["bert"])
    sentence = "高血压患者能吃党参吗？"
    words = [w for w in segment(sentence, pos_tokenizer()) if w.text in ("患者", "党参")]
    row = _Row(0, 0, (0, len(sentence)), sentence, words)
    encode_row(row, tokenizer, 64)
    assert [len(g) for g in row.mask_groups] == [2, 2]  # one [MASK] per character of each whole word
    assert [row.input_ids[p] for g in row.mask_groups for p in g] == [tokenizer.mask_token_id] * 4
    plain = tokenizer(sentence)["input_ids"]
    assert len(row.input_ids) == len(plain)
    assert [i for p, i in enumerate(row.input_ids) if not any(p in g for g in row.mask_groups)] == \
           [i for p, i in enumerate(plain) if not any(p in g for g in row.mask_groups)]
    encode_row(row, tokenizer, 7)  # truncation: a word cut off is not masked
    assert row.mask_groups[0] and row.mask_groups[1] == []


def test_batched_encoding_matches_per_row(tiny, data_dir):
    from transformers import AutoTokenizer

    from augment.mlm import encode_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny["bert"])
    aug = MaskedLMAugmenter(_params(tiny, data_dir))
    docs = _docs(data_dir, "domain_medical.jsonl", 6)
    rows = [r for i, d in enumerate(docs) for r in aug.plan_rows(i, d, 1)]
    singles = [_Row(r.doc_index, r.variant, r.span, r.sentence, r.words) for r in rows]
    for r in singles:
        encode_row(r, tokenizer, 40)
    encode_rows(rows, tokenizer, 40)
    assert len(rows) > 5 and [(r.input_ids, r.mask_groups) for r in rows] == [(r.input_ids, r.mask_groups) for r in singles]


def test_plan_batches_cuts_padding():
    from augment.mlm import plan_batches

    lengths = [5] * 4 + [50] * 4
    assert plan_batches(lengths, 8, 0) == [(0, 4), (4, 8)]  # 220 padded tokens instead of 400
    assert plan_batches(lengths, 8, 1000) == [(0, 8)]  # a call dearer than the padding: one batch
    capped = plan_batches(lengths, 3, 1)  # at most 3 rows: 4 calls, still no row padded
    assert len(capped) == 4 and sum((e - s) * lengths[e - 1] for s, e in capped) == 220
    spans = plan_batches(sorted([3, 9, 9, 10, 30, 31, 31, 80]), 3, 4)
    assert spans[0][0] == 0 and spans[-1][1] == 8 and all(a[1] == b[0] and b[1] - b[0] <= 3 for a, b in zip(spans, spans[1:]))
    assert plan_batches([], 8, 4) == []


def test_masked_logits_equal_full_forward(tiny, data_dir):
    """The head runs on masked positions only, yet gives the full forward's logits there."""
    import torch

    from augment.mlm import encode_rows, masked_logits
    from augment.models import load_model

    tokenizer, model = load_model("masked_lm", tiny["bert"], "cpu", "float32")
    aug = MaskedLMAugmenter(_params(tiny, data_dir))
    rows = [r for i, d in enumerate(_docs(data_dir, "domain_medical.jsonl", 6)) for r in aug.plan_rows(i, d, 1)]
    encode_rows(rows, tokenizer, 512)
    width = max(len(r.input_ids) for r in rows)
    assert min(len(r.input_ids) for r in rows) < width  # padding present
    ids = torch.tensor([r.input_ids + [0] * (width - len(r.input_ids)) for r in rows])
    mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows])
    where = [(b, p) for b, r in enumerate(rows) for g in r.mask_groups for p in g]
    with torch.inference_mode():
        got = masked_logits(model, ids, mask, where)
        full = model(input_ids=ids, attention_mask=mask).logits[[b for b, _ in where], [p for _, p in where]]
    assert got.shape == full.shape and torch.allclose(got, full, atol=1e-5, rtol=1e-5)


def test_choose_fill_uses_vocab_table(tiny):
    import random

    from transformers import AutoTokenizer

    from augment.mlm import choose_fill, vocab_table
    from augment.words import Word

    tokenizer = AutoTokenizer.from_pretrained(tiny["bert"])
    table = vocab_table(tokenizer)
    assert vocab_table(tokenizer) is table and len(table) == len(tokenizer)
    assert table[tokenizer.mask_token_id] is None and table[tokenizer.cls_token_id] is None
    han = [i for i, t in enumerate(table) if t and len(t) == 1 and "\u4e00" <= t <= "\u9fff"][:6]
    word = Word(0, 2, table[han[0]] + table[han[1]], "n")
    # candidate j joins the j-th id of each position; the original word, a special token and an
    # id past the tokenizer (a padded embedding matrix) are skipped
    ranked = [[han[0], tokenizer.mask_token_id, len(table) + 5, han[2], han[4]],
              [han[1], han[3], han[3], han[3], han[5]]]
    got = {choose_fill(word, ranked, table, frozenset(), 10, random.Random(s)) for s in range(30)}
    assert got == {table[han[2]] + table[han[3]], table[han[4]] + table[han[5]]}
    assert choose_fill(word, [[han[0]], [han[1]]], table, frozenset(), 10, random.Random(0)) is None


def test_masked_lm_changes_only_chosen_words(tiny, data_dir):
    config = _params(tiny, data_dir)
    docs = _docs(data_dir, "domain_medical.jsonl", 6) + _docs(data_dir, "expert.jsonl", 3)
    out = MaskedLMAugmenter(config)(docs)
    variants = [d for d in out if d.meta.get("augment")]
    assert len(variants) == 6 + 2 * 3
    stop = load_stop_words(())
    for v in variants:
        parent = next(d for d in docs if d.id == v.meta["augment"]["parent_id"])
        changes = v.meta["augment"]["params"]["changes"]
        assert changes
        rebuilt, offset = parent.text, 0
        for c in changes:
            assert parent.text[c["at"]:c["at"] + len(c["from"])] == c["from"] and c["to"] != c["from"]
            assert c["from"] not in stop and not any(ch.isdigit() for ch in c["from"])
            assert c["from"] not in ("北京", "上海", "CPU")
            rebuilt = rebuilt[:c["at"] + offset] + c["to"] + rebuilt[c["at"] + offset + len(c["from"]):]
            offset += len(c["to"]) - len(c["from"])
        assert rebuilt == v.text


# ----------------------------------------------------------------------------- back-translation


def test_back_translation_keeps_separators_and_foreign_sentences(tiny, data_dir):
    from augment.backtranslate import BackTranslationAugmenter

    config = _params(tiny, data_dir)
    doc = Document("bt1", "高血压患者能吃党参吗？\nVersion 2.0 only.\n可以吃。", domain="medical", lang="zh")
    out = BackTranslationAugmenter(config)([doc])
    variant = out[1]
    assert variant.id == "bt1~bt0" and variant.meta["augment"]["params"]["num_translated"] == 2
    lines = variant.text.split("\n")
    assert len(lines) == 3 and lines[1] == "Version 2.0 only."  # English sentence of a zh document is copied
    assert variant.meta["augment"]["model"] == f"{tiny['marian']} -> {tiny['marian']}"


@pytest.mark.parametrize("sample", [False, True])
def test_back_translation_independent_of_batch(tiny, data_dir, sample):
    from augment.backtranslate import BackTranslationAugmenter

    bt = {"do_sample": sample, "num_beams": 2, "max_new_tokens": 8, "batch_sentences": 8,
          "routes": {"zh": {"forward": tiny["marian"], "backward": tiny["marian"]}, "en": {"forward": tiny["marian"], "backward": tiny["marian"]}}}
    config = _params(tiny, data_dir, back_translation=bt, rates={"domain": {"back_translation": 2}})
    docs = _docs(data_dir, "domain_medical.jsonl", 100)
    docs = [d for d in docs if d.lang == "zh"][:2] + [d for d in docs if d.lang == "en"][:2]
    for d in docs:  # a few sentences each keep the test fast
        d.text = d.text[:d.text.find("。", 60) + 1 or 80] if d.lang == "zh" else d.text[:d.text.find(". ", 100) + 1 or 120]
    aug = BackTranslationAugmenter(config)
    together = [d.text for d in aug(docs) if d.meta.get("augment")]
    alone = [d.text for doc in reversed(docs) for d in aug([doc]) if d.meta.get("augment")]
    assert sorted(together) == sorted(alone)
    assert len(together) == (8 if sample else 4)  # beam search: one variant per document
    if sample:
        other = [d.text for d in BackTranslationAugmenter(_params(tiny, data_dir, back_translation=bt, seed=99,
                                                                  rates={"domain": {"back_translation": 2}}))(docs) if d.meta.get("augment")]
        assert other != together


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_masked_lm_independent_of_batch(tiny, data_dir, dtype):
    """The same variants whether a document is batched with others (other widths, other
    padding) or alone, in fp32 and in bf16 (``dtype: auto`` on CPUs with native bf16)."""
    config = _params(tiny, data_dir, dtype=dtype, rates={"domain": {"masked_lm": 2}})
    docs = _docs(data_dir, "domain_medical.jsonl", 12)
    aug = MaskedLMAugmenter(config)
    together = [d.text for d in aug(docs) if d.meta.get("augment")]
    alone = [d.text for doc in reversed(docs) for d in aug([doc]) if d.meta.get("augment")]
    assert len(together) >= 10 and sorted(together) == sorted(alone)


def test_auto_dtype_on_cpu():
    import torch

    from augment.models import cpu_has_native_bf16, resolve_dtype

    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("float32", "cpu") == torch.float32 and resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_model_failure_keeps_original(tiny, data_dir, tmp_path):
    from augment.backtranslate import BackTranslationAugmenter

    bt = {"routes": {"zh": {"forward": str(tmp_path / "missing"), "backward": tiny["marian"]}}}
    doc = Document("f1", "你好。", domain="medical", lang="zh")
    out = BackTranslationAugmenter(_params(tiny, data_dir, back_translation=bt))([doc])
    assert out[0] is doc and not doc.dropped
    assert out[1].id == "f1~bt0" and out[1].drop_reason == "error_RuntimeError"


# ----------------------------------------------------------------------------- the stage


def test_pipeline_lineage_originals_kept_and_determinism(tiny, data_dir):
    docs = _docs(data_dir, "domain_medical.jsonl", 5) + _docs(data_dir, "expert.jsonl", 3) + _docs(data_dir, "general_zh.jsonl", 2)
    docs.append(Document("kg1", "北京的医院用CPU处理影像，每例约需3分钟，结果并不总是准确。", domain="medical", lang="zh"))  # graph entities with aliases
    run = lambda cfg, items: [(d.id, d.text, d.drop_reason) for d in build_pipeline(cfg)([Document.from_row(x.to_row()) for x in items])]  # noqa: E731
    config = _params(tiny, data_dir)
    out = list(build_pipeline(config)([Document.from_row(d.to_row()) for d in docs]))
    originals = [d for d in out if "augment" not in d.meta]
    assert [(d.id, d.text) for d in originals] == [(d.id, d.text) for d in docs]
    variants = [d for d in out if "augment" in d.meta]
    for v in variants:
        lineage = v.meta["augment"]
        assert set(lineage) >= {"method", "parent_id", "model", "params", "guard"}
        assert v.id.startswith(lineage["parent_id"] + "~") and v.id.count("~") == 1  # variants are not augmented again
    general = {d.id for d in docs if d.domain == "general"}
    assert not any(v.meta["augment"]["parent_id"] in general for v in variants)
    assert {v.meta["augment"]["method"] for v in variants} == {"back_translation", "masked_lm", "entity_swap"}
    # same seed, other batch sizes and document order -> same records; other seed -> other variants
    small = run(_params(tiny, data_dir, batch_docs=1), list(reversed(docs)))
    assert sorted(small) == sorted((d.id, d.text, d.drop_reason) for d in out)
    reseeded = run(_params(tiny, data_dir, seed=7), docs)
    assert {i: t for i, t, _ in reseeded if "~mlm" in i} != {d.id: d.text for d in variants if "~mlm" in d.id}
    stats = AugmentStats().add_all(out).to_dict()["augment"]
    assert stats["num_originals"] == len(docs)
    mlm = stats["by_method"]["masked_lm"]
    assert mlm["made"] == 6 + 2 * 3 and mlm["kept"] + mlm["rejected"] == mlm["made"]
    assert mlm["words"]["num_changed"] + mlm["words"]["num_not_interchangeable"] <= mlm["words"]["num_masked"]
    swaps = stats["by_method"]["entity_swap"]["swap_kinds"]
    assert set(swaps["kept"]) | set(swaps["rejected"]) == {"alias"}  # the default mode
    for method, figures in stats["by_method"].items():
        assert sum(figures["rejected_by_reason"].values()) == figures["rejected"]
        assert figures["rejected_by_reason"].get("changed_fact", 0) == sum(
            v.drop_reason == "changed_fact" for v in variants if v.meta["augment"]["method"] == method)


def test_local_runner_writes_stage_output(tiny, data_dir, tmp_path):
    import yaml

    from augment.__main__ import main
    from etl.io.records import read_parquet_dir

    config = _params(tiny, data_dir)
    from etl.core.config import config_to_dict

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"augment": config_to_dict(config)}, allow_unicode=True), encoding="utf-8")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": d.id, "text": d.text, "domain": d.domain, "lang": d.lang}, ensure_ascii=False) + "\n"
                           for d in _docs(data_dir, "domain_medical.jsonl", 4)), encoding="utf-8")
    report = main(["--input", str(src), "--output", str(tmp_path / "out"), "--params", str(params), "--no-progress"])
    kept = list(read_parquet_dir(tmp_path / "out" / "kept"))
    rejected = list(read_parquet_dir(tmp_path / "out" / "rejected"))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["augment"] == report["augment"]
    by_method = stats["augment"]["by_method"]
    assert sum(m["kept"] for m in by_method.values()) == len(kept) - 4
    assert sum(m["rejected"] for m in by_method.values()) == len(rejected)
    assert all(r.meta["augment"]["parent_id"] for r in rejected)


def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, augment, augment.pipeline, augment.backtranslate, augment.mlm, augment.entity_swap, augment.__main__;"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
