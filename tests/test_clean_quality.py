"""Quality rules: each fires with its own reason; clean text passes."""
from __future__ import annotations

import dataclasses

from etl.clean.quality import QualityConfig, check_quality, dup_ngram_chars, top_ngram_chars
from etl.core.document import Document

GOOD_EN = ("The committee met on Tuesday to review the budget and the plans that have been proposed for the new library. "
           "Members of the public were invited to speak, and several of them raised concerns about the cost of the building. "
           "After a long discussion, the chair said that the council would publish a revised proposal with more detail next month.")
GOOD_ZH = ("北京是中华人民共和国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的建城史，"
           "保存了大量的历史遗迹。每年都有很多游客来这里参观故宫和长城，感受古老文明的魅力。")


def _check(text: str, lang: str, **overrides) -> str | None:
    config = QualityConfig(**overrides)
    return check_quality(Document(id="x", text=text, lang=lang), config)


def test_clean_text_passes():
    assert _check(GOOD_EN, "en") is None
    assert _check(GOOD_ZH, "zh") is None


def test_gopher_rules_reasons():
    assert _check("Too short to be a document.", "en") == "gopher_too_few_words"
    assert _check(" ".join(["a"] * 60) + ". the of.", "en") == "gopher_short_mean_word"
    assert _check(GOOD_EN + " " + " ".join(["#tag"] * 12), "en") == "gopher_hash_ratio"
    no_stop = ("Committee members reviewed budget plans proposed for libraries. " * 8)
    assert _check(no_stop.replace("reviewed", "reviewed " + str(1)), "en") in ("gopher_few_stop_words", "dup_5_gram_frac", "top_2_gram_frac")


def test_repetition_rules():
    lines = "\n".join(["This exact line is repeated many times over."] * 5 + [GOOD_EN])
    assert _check(lines, "en") == "dup_line_frac"
    assert _check(GOOD_ZH * 3, "zh") == "dup_10_gram_frac"


def test_c4_rules():
    assert _check(GOOD_EN + " Lorem ipsum dolor sit amet.", "en") == "c4_lorem_ipsum"
    assert _check(GOOD_EN.replace(".", ""), "en") == "c4_too_few_sentences"
    c4 = dataclasses.replace(QualityConfig().c4, curly_bracket=True)
    assert check_quality(Document(id="x", text=GOOD_EN + " f(x) { return 1; }.", lang="en"), QualityConfig(c4=c4)) == "c4_curly_bracket"


def test_c4_remove_lines_option():
    c4 = dataclasses.replace(QualityConfig().c4, remove_lines=True)
    doc = Document(id="x", text="Menu Home About\n" + GOOD_EN, lang="en")
    assert check_quality(doc, QualityConfig(c4=c4)) is None
    assert doc.text == GOOD_EN


def test_cjk_rules():
    assert _check("太短了。", "zh") == "cjk_too_few_chars"
    assert _check("这是中文。" + "abc def ghi jkl mno pqr stu vwx yz " * 10 + "。", "zh") == "cjk_low_cjk_ratio"


def test_ngram_helpers_match_gopher_definitions():
    words = "a b c a b c a b c".split()
    assert top_ngram_chars(words, 2) == 3 * 3  # "a b" (3 chars) three times
    assert dup_ngram_chars(words, 3) == 6  # "abc" repeated twice after the first, greedy skip
    assert dup_ngram_chars("a b c d e".split(), 2) == 0


def test_c4_counts_complete_sentences_on_lines_that_end_in_an_attribution():
    from etl.clean.quality import C4Config, c4_rules

    answer = ("The A1C goal for many people with diabetes is below 7. It may be different for you. "
              "Ask what your goal should be. NIH: National Institute of Diabetes and Digestive and Kidney Diseases")
    assert c4_rules(answer, C4Config())[0] is None
    assert c4_rules(answer, C4Config(min_sentences=4))[0] == "c4_too_few_sentences"
    assert c4_rules("Home | About us | Contact | Careers", C4Config())[0] == "c4_too_few_sentences"
    assert c4_rules("结果显示水柱毛初级生产力与温度呈显著正相关．", C4Config(), cjk=True)[0] is None
    kept = c4_rules(answer + "\nA second line that ends properly.", C4Config(remove_lines=True))[1]
    assert kept == "A second line that ends properly."  # line removal still needs a final stop
