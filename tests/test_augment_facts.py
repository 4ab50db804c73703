"""Meaning-preserving augmentation: alias-only entity swap, the fact guard, counterfactual mode.

Small hand-made documents and a hand-made knowledge graph; no models (the masked-LM rank check
is tested on its own function, with hand-made rankings)."""
from __future__ import annotations

import collections

import pytest

from augment.config import METHODS, load_augment_config
from augment.entity_swap import EntitySwapAugmenter, KnowledgeGraph, load_graph
from augment.facts import FactExtractor, compare_facts, parse_zh_number
from augment.lineage import guard_variant, make_variant
from augment.mlm import interchangeable
from augment.pipeline import AugmentStats
from etl.core.document import Document

GRAPH = """entity,type,aliases
中央处理器,hardware,CPU|central processing unit
北京,place,北京市|Beijing
上海,place,上海市
深圳,place,
高血压,disease,hypertension|高血压病
无线网络,technology,Wi-Fi|WLAN
新型冠状病毒肺炎,disease,COVID-19|新冠肺炎
"""


@pytest.fixture()
def graph_file(tmp_path):
    path = tmp_path / "kg.csv"
    path.write_text(GRAPH, encoding="utf-8")
    return path


def _config(graph_file, mode="alias", rate=8, **entity_swap):
    return load_augment_config({"augment": {
        "groups": {"d": ["medical"]}, "rates": {"d": {m: rate for m in METHODS}},
        "entity_swap": {"knowledge_graph": [str(graph_file)], "mode": mode, "entity_fraction": 1.0, **entity_swap}}})


def _facts(extractor: FactExtractor, text: str) -> dict:
    return {kind: dict(values) for kind, values in extractor.facts(text).items() if values}


# ----------------------------------------------------------------------------- entity swap modes


def test_default_mode_swaps_only_graph_entities_by_their_aliases(graph_file):
    config = _config(graph_file)
    aug = EntitySwapAugmenter(config)
    graph = aug.graph
    # 切牙 (incisor), 张伟 (a person) and 南宁 (a place) are tagged by jieba but not in the graph
    text = "张伟在北京的医院治疗高血压，医生检查了他的切牙，南宁的专家也来了。"
    doc = Document("a1", text, domain="medical", lang="zh")
    tagged = {m.surface for m in aug.finder.mentions(text) if m.key.startswith("pos:")}
    assert {"张伟", "南宁"} <= tagged
    variants = aug([doc])[1:]
    assert len(variants) == 8
    for variant in variants:
        params = variant.meta["augment"]["params"]
        assert params["mode"] == "alias" and "alias_prob" not in params
        assert params["swaps"] and all(s["kind"] == "alias" for s in params["swaps"])
        for swap in params["swaps"]:
            entity = graph.by_surface[swap["from"][0]]
            assert swap["to"] in entity.surfaces and swap["to"] not in swap["from"]  # an alias of the same entity
        for word in ("张伟", "切牙", "南宁", "医院", "专家"):
            assert variant.text.count(word) == text.count(word)  # untouched
        assert not variant.dropped, variant.meta["augment"]["guard"]  # same facts: kept
    assert {v.text for v in variants} >= {text.replace("北京", "北京市").replace("高血压", "hypertension"),
                                          text.replace("北京", "Beijing").replace("高血压", "高血压病")}


def test_default_mode_leaves_documents_without_aliases_alone(graph_file):
    aug = EntitySwapAugmenter(_config(graph_file))
    doc = Document("a2", "深圳的切牙诊所由张伟开办。", domain="medical", lang="zh")  # 深圳 is in the graph, without aliases
    assert aug([doc]) == [doc]


def test_counterfactual_mode_when_asked(graph_file):
    aug = EntitySwapAugmenter(_config(graph_file, mode="counterfactual", alias_prob=0.0))
    text = "张伟在北京工作，北京的冬天很冷。"
    variants = aug([Document("c1", text, domain="medical", lang="zh")])[1:]
    kinds = collections.Counter(s["kind"] for v in variants for s in v.meta["augment"]["params"]["swaps"])
    assert kinds["counterfactual"] == 8  # 北京 -> 上海 or 深圳 in every variant (no alias drawn)
    for variant in variants:
        params = variant.meta["augment"]["params"]
        assert params["mode"] == "counterfactual" and params["alias_prob"] == 0.0
        swap = next(s for s in params["swaps"] if s["from"] == ["北京"])
        assert swap["to"] in ("上海", "深圳") and variant.text.count(swap["to"]) == 2 and "北京" not in variant.text
        assert not variant.dropped  # the entity named instead is the planned one, the rest is unchanged
    # a tagged word outside the graph is swapped too in this mode, and says so
    variants = aug([Document("c2", "张伟在南宁工作。", domain="medical", lang="zh")])[1:]
    assert {s["kind"] for v in variants for s in v.meta["augment"]["params"]["swaps"]} == {"non_graph"}
    stats = AugmentStats().add_all(variants).to_dict()["augment"]["by_method"]["entity_swap"]
    assert stats["swap_kinds"] == {"kept": {"non_graph": 8}, "rejected": {}}


def test_unknown_mode_is_a_config_error(graph_file):
    with pytest.raises(ValueError, match="mode must be one of"):
        _config(graph_file, mode="same_type")


# ----------------------------------------------------------------------------- the fact guard


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("original, variant, kind", [
    ("患者每日服用阿司匹林100毫克，连续3天。", "患者每日服用阿司匹林毫克，连续3天。", "number"),  # a dropped number
    ("患者每日服用阿司匹林100毫克，连续3天。", "患者每日服用阿司匹林100毫克，连续三周。", "unit"),  # 3 days -> 3 weeks
    ("高血压患者在北京接受治疗，效果良好。", "高血压患者在上海接受治疗，效果良好。", "entity"),  # another entity
    ("高血压患者不能服用这种药物，否则有风险。", "高血压患者能服用这种药物，否则有风险。", "negation"),  # a removed negation
    ("The drug did not lower blood pressure in 2023.", "The drug did lower blood pressure in 2023.", "negation"),
    ("The trial started on May 5, 2023 in Beijing.", "The trial started on May 6, 2023 in Beijing.", "date"),
])
def test_changed_facts_are_rejected(graph_file, method, original, variant, kind):
    config = _config(graph_file)
    facts = load_graph(config.entity_swap).fact_extractor()
    parent = Document("p", original, domain="medical", lang="zh")
    child = guard_variant(config, parent, make_variant(parent, method, 0, variant, "test", {}), "step", facts)
    assert child.drop_reason == "changed_fact"
    assert kind in child.meta["augment"]["guard"]["changed"]
    assert "similarity" in child.meta["augment"]["guard"]  # the similarity figures are kept beside


@pytest.mark.parametrize("original, variant", [
    ("高血压患者每日服用100毫克。", "hypertension患者每日服用100 mg。"),  # alias and unit spelling
    ("北京的CPU有三千五百个。", "北京市的central processing unit有3500个。"),
    ("他没有去北京，有效率百分之五十。", "他未去北京市，有效率50%。"),  # another negation word, same count
    ("2023年5月，无线网络无法连接。", "二〇二三年五月，Wi-Fi无法连接。"),  # 无 inside an alias is no negation
    ("The CPU did not fail on May 5, 2023.", "The central processing unit didn't fail on 5 May 2023."),
])
def test_kept_facts_pass(graph_file, original, variant):
    config = _config(graph_file)
    facts = load_graph(config.entity_swap).fact_extractor()
    parent = Document("p", original, domain="medical", lang="zh")
    child = guard_variant(config, parent, make_variant(parent, "back_translation", 0, variant, "test", {}), "step", facts)
    assert "changed" not in child.meta["augment"]["guard"] and child.drop_reason != "changed_fact"


def test_fact_kinds_can_be_narrowed(graph_file):
    config = load_augment_config({"augment": {"entity_swap": {"knowledge_graph": [str(graph_file)]},
                                              "guard": {"back_translation": {"facts": ["number"], "min_similarity": 0.0}}}})
    facts = load_graph(config.entity_swap).fact_extractor()
    parent = Document("p", "他不在北京。", domain="medical", lang="zh")
    child = guard_variant(config, parent, make_variant(parent, "back_translation", 0, "他在上海。", "test", {}), "step", facts)
    assert child.drop_reason != "changed_fact"  # negations and entities not checked for this method
    with pytest.raises(ValueError, match="unknown fact kind"):
        load_augment_config({"augment": {"guard": {"masked_lm": {"facts": ["colour"]}}}})


# ----------------------------------------------------------------------------- what counts as a fact


@pytest.mark.parametrize("text, value", [("三千五百", 3500), ("两万三", 23000), ("一百零五", 105), ("十二", 12), ("二十", 20),
                                         ("二〇二三", 2023), ("三点五", 3.5), ("一万零五百", 10500), ("三亿五千万", 350000000), ("十", 10)])
def test_chinese_numerals(text, value):
    assert float(parse_zh_number(text)) == value


def test_numbers_dates_units_zh():
    facts = _facts(FactExtractor(), "2023年5月，三千五百名患者中百分之五十服用５００ｍｇ，体温38.5℃，疗程两周，费用1.2万元，三分之一无效。")
    assert facts["date"] == {"2023-05": 1}
    assert facts["number"] == {"3500": 1, "50%": 1, "500 mg": 1, "38.5 °C": 1, "2 week": 1, "12000 元": 1, "1/3": 1}
    assert facts["unit"] == {"%": 1, "mg": 1, "°C": 1, "week": 1, "元": 1}
    assert facts["negation"] == {"无": 1}


def test_numbers_dates_units_en():
    facts = _facts(FactExtractor(), "On May 5, 2023, twenty-five of 1,200 patients (2.5%) took 10 mg/kg; none were harmed. No. 7 was -5 °C.")
    assert facts["date"] == {"2023-05-05": 1}
    assert facts["number"] == {"25": 1, "1200": 1, "2.5%": 1, "10 mg/kg": 1, "7": 1, "-5 °C": 1}
    assert facts["negation"] == {"none": 1}


def test_same_fact_in_other_spellings():
    fx = FactExtractor()
    pairs = [("百分之五十", "50%"), ("５０％", "50 percent"), ("三千五百", "3,500"), ("2023年5月5日", "二〇二三年五月五日"),
             ("500毫克", "500 mg"), ("38℃", "38摄氏度"), ("3 million", "three million"), ("1.5万", "15000"), ("2023-05-05", "2023/5/5")]
    for a, b in pairs:
        assert not compare_facts(fx.facts(a), fx.facts(b)), (a, b)


@pytest.mark.parametrize("text", ["无论如何", "无锡", "无线", "非常好", "非洲", "未来", "特别", "别人", "是否", "否则", "不过", "不仅",
                                  "没收", "差不多", "独一无二", "not only this", "No. 5 road"])
def test_negator_characters_inside_words_are_not_negations(text):
    assert not FactExtractor().facts(text)["negation"]


@pytest.mark.parametrize("text, count", [("他不吃", 1), ("没有发现", 1), ("尚未完成", 1), ("无明显副作用", 1), ("并非如此", 1),
                                         ("别吃", 1), ("请勿吸烟", 1), ("否认病史", 1), ("不得不去", 0), ("did not", 1), ("didn't", 1),
                                         ("never, without", 2), ("no one came", 1), ("cannot", 1)])
def test_negations(text, count):
    assert sum(FactExtractor().facts(text)["negation"].values()) == count


def test_idioms_with_numerals_are_not_numbers():
    assert not FactExtractor().facts("一起一般统一十分千万万一，进一步")["number"]
    assert FactExtractor().facts("第一，一个人，三次")["number"] == {"1": 2, "3 次": 1}


def test_entities_up_to_aliases_and_not_numbers(graph_file):
    fx = load_graph(_config(graph_file).entity_swap).fact_extractor()
    assert _facts(fx, "COVID-19和新冠肺炎，CPUs里的CPU。") == {"entity": {"新型冠状病毒肺炎": 2, "中央处理器": 1}}  # no 19; not inside CPUs
    changed = compare_facts(fx.facts("北京和北京市"), fx.facts("北京和上海"))
    assert changed == {"entity": {"missing": ["北京"], "added": ["上海"]}}


def test_number_multisets_count_repeats():
    fx = FactExtractor()
    changed = compare_facts(fx.facts("3 mg, then 3 mg again"), fx.facts("3 mg, then again"))
    assert changed == {"number": {"missing": ["3 mg"], "added": []}, "unit": {"missing": ["mg"], "added": []}}


# ----------------------------------------------------------------------------- masked-LM: interchangeable


def test_masked_lm_original_rank_check():
    ranked = [[7, 3, 9, 4], [5, 8, 2, 1]]  # per position of a two-token word, token ids best first
    assert interchangeable([3, 8], ranked, 2)  # the original is 2nd at both positions
    assert not interchangeable([3, 2], ranked, 2)  # 3rd at the second position
    assert interchangeable([3, 2], ranked, 3)
    assert interchangeable([6, 6], ranked, 0)  # check off
    assert not interchangeable([3], ranked, 4)  # token counts differ: never interchangeable


def test_stats_count_changed_fact_kinds(graph_file):
    config = _config(graph_file)
    facts = load_graph(config.entity_swap).fact_extractor()
    parent = Document("p", "他不在北京，住了3天。", domain="medical", lang="zh")
    kept = guard_variant(config, parent, make_variant(parent, "masked_lm", 0, "他不在北京市，待了3天。", "m", {}), "s", facts)
    lost = guard_variant(config, parent, make_variant(parent, "masked_lm", 1, "他在上海，住了4天。", "m", {}), "s", facts)
    stats = AugmentStats().add_all([parent, kept, lost]).to_dict()["augment"]["by_method"]["masked_lm"]
    assert stats["rejected_by_reason"] == {"changed_fact": 1} and stats["kept"] == 1
    assert stats["changed_fact_by_kind"] == {"entity": 1, "negation": 1, "number": 1}


def test_report_lines_per_method():
    from spark_jobs.report import augment_lines

    aug = {"by_method": {"entity_swap": {"made": 10, "kept": 7, "rejected": 3, "rejected_by_reason": {"changed_fact": 2, "too_different": 1},
                                         "changed_fact_by_kind": {"entity": 2},
                                         "swap_kinds": {"kept": {"alias": 9}, "rejected": {"alias": 3}}}}}
    line = "  entity_swap: 10 made, 7 kept, 3 rejected (changed_fact 2, too_different 1); facts changed: entity 2; swaps kept: alias 9 (rejected: alias 3)"
    assert augment_lines(aug) == [line]


def test_swap_kinds_counter_classifies_against_the_graph(graph_file):
    from benchmarks.augment.swap_kinds import count_swap_kinds

    graph = KnowledgeGraph.load([graph_file])
    parent = Document("p", "x", domain="medical")

    def variant(i, swaps, reason=None):
        child = make_variant(parent, "entity_swap", i, "y", "m", {"swaps": [{"from": [f], "to": t, "kind": "same_type"} for f, t in swaps]})
        return child.drop(reason, "s") if reason else child

    records = [parent, variant(0, [("北京", "北京市"), ("切牙", "上海")]), variant(1, [("北京", "深圳")], "changed_fact")]
    result = count_swap_kinds(records, graph)
    assert result["swaps"] == {"kept": {"alias": 1, "non_graph": 1}, "rejected": {"counterfactual": 1}}
    assert result["variants_by_outcome"] == {"kept": 1, "changed_fact": 1}
