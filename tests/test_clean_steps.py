"""Unit tests of the cleaning functions: exact outputs and drop reasons on crafted inputs."""
from __future__ import annotations

import re

import pytest

from etl.clean.charfilter import CharFilterConfig, filter_chars
from etl.clean.html import HtmlConfig, strip_html
from etl.clean.langid import identify_language
from etl.clean.normalize import NormalizeConfig, normalize_text, unwrap_lines
from etl.clean.pii import mask_pii, valid_cn_id
from etl.clean.repetition import remove_repetition
from etl.core.document import Document
from etl.io.dialogue import DialogueConfig, flatten_document


def test_normalize_width_controls_whitespace():
    raw = "ＡＢＣ１２３\u200b\u00a0 中文，标点！\t\r\nline\x07 two\n\n\n\nend  "
    assert normalize_text(raw) == "ABC123 中文，标点！\nline two\n\nend"


def test_normalize_half_width_punct_option():
    assert normalize_text("你好，世界！", NormalizeConfig(punct_width="half")) == "你好,世界!"


def test_normalize_t2s():
    assert normalize_text("漢字與臺灣", NormalizeConfig(t2s=True)) == "汉字与台湾"


def test_unwrap_hard_wraps_is_a_fixed_point():
    text = ("It was the best of times, it was the worst of times, it was\n"
            "the age of wisdom, it was the age of foolishness.\n"
            "Short heading\n"
            "- a list item that is long enough to be considered here\n- next item")
    once = unwrap_lines(text)
    assert once.split("\n")[0] == "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness."
    assert "- next item" in once.split("\n")
    assert unwrap_lines(once) == once


def test_unwrap_joins_chinese_without_space():
    text = "这是一段被硬换行切开的中文文本，它在这里被折断了而且还要更长一些才行\n继续写下去。"
    assert unwrap_lines(text) == "这是一段被硬换行切开的中文文本，它在这里被折断了而且还要更长一些才行继续写下去。"


def test_charfilter_seed_preset_matches_seed_rule():
    import re

    text = "Hello, 世界! café ☺ 123。"
    expected = re.sub(r"[^a-zA-Z0-9\u4e00-\u9fa5\s]", "", text)
    out, num = filter_chars(text, CharFilterConfig(preset="seed"))
    assert out == " ".join(expected.split())
    assert num == len(text) - len(expected)


def test_charfilter_default_keeps_punctuation_drops_emoji():
    out, num = filter_chars("你好，world! “引号” α-β 😀😀", CharFilterConfig())
    assert out == "你好，world! “引号” α-β"
    assert num == 2


def test_html_no_body_and_script_only_pages_are_dropped():
    for page in ("<html><head><title>t</title></head></html>", "<html><body><script>var a = 1;</script></body></html>", "   "):
        doc = Document(id="p", text=page, meta={"format": "html"})
        assert strip_html(doc, HtmlConfig()) == "html_no_text"


def test_html_keeps_headings_lists_tables_and_code_drops_nav():
    page = """<!DOCTYPE html><html><head><style>p{color:red}</style><script>alert(1)</script></head><body>
    <nav><a href="/">Home</a> | <a href="/about">About us</a></nav>
    <article><h1>Installing packages</h1><p>The apt tool installs packages from the archive and resolves dependencies.</p>
    <ul><li>first list item here</li><li>second list item here</li></ul>
    <table><tr><td>cell one</td><td>cell two</td></tr></table>
    <pre>apt install vim</pre><p>Another paragraph that explains what happened after installing the editor.</p></article>
    <footer>Copyright 2024 Example Corp. All rights reserved.</footer></body></html>"""
    doc = Document(id="p", text=page)
    assert strip_html(doc) is None  # main-content heuristics (default)
    lines = doc.text.split("\n")
    assert "Installing packages" in lines
    assert "apt install vim" in lines and "cell one\t\tcell two" in lines
    assert "alert" not in doc.text and "color:red" not in doc.text and "About us" not in doc.text
    assert "All rights reserved" not in doc.text
    structural = Document(id="p", text=page)  # markup-based boilerplate removal keeps every list
    assert strip_html(structural, HtmlConfig(main_content=False)) is None
    assert "  • first list item here" in structural.text.split("\n")
    assert "About us" not in structural.text and "All rights reserved" not in structural.text


def test_langid_mixed_script_rule_and_filter():
    zh = Document(id="z", text="使用 apt-get install 命令安装软件包，然后运行 systemctl restart nginx 重启服务。这是中文说明。")
    assert identify_language(zh) is None and zh.lang == "zh" and zh.meta["lang_rule"] == "script"
    en = Document(id="e", text="The quick brown fox jumps over the lazy dog and keeps running through the forest.")
    assert identify_language(en) is None and en.lang == "en"
    de = Document(id="d", text="Der schnelle braune Fuchs springt über den faulen Hund und läuft weiter durch den Wald.")
    assert identify_language(de) == "lang_not_allowed" and de.lang == "de"


def test_pii_masks_valid_and_leaves_invalid():
    text = "mail a.b@example.org, 手机 13812345678, ID 11010519491231002X, bad ID 110105194912310021, ip 10.0.0.1, version 2.6.32"
    out, counts = mask_pii(text)
    assert out == "mail <EMAIL>, 手机 <PHONE>, ID <ID_CARD>, bad ID 110105194912310021, ip <IP>, version 2.6.32"
    assert counts == {"email": 1, "id_card": 1, "ip": 1, "phone": 1}
    assert valid_cn_id("11010519491231002X") and not valid_cn_id("110105194913310028")


def test_pii_shortcuts_change_nothing_on_texts_near_their_conditions():
    """mask_pii skips a pattern where a necessary character is missing; each text sits just
    inside or outside one such condition, and the answer must equal running every pattern."""
    from etl.clean import pii

    def every_pattern(text):
        counts = {}
        for kind, pattern, tag, check in [("email", pii._EMAIL, "<EMAIL>", None), ("id_card", pii._ID18, "<ID_CARD>", valid_cn_id),
                                          ("id_card", pii._ID15, "<ID_CARD>", valid_cn_id), ("ip", pii._IPV6, "<IP>", pii._valid_ipv6),
                                          ("ip", pii._IPV4, "<IP>", pii._valid_ip), ("phone", pii._PHONE, "<PHONE>", None)]:
            text, num = pii._sub(pattern, tag, text, check)
            if num:
                counts[kind] = counts.get(kind, 0) + num
        return text, counts

    texts = ["a@b.io", "no at sign.com", "110105194912310", "11010519491231002X", "1101051949123100", "fe80::1", "1::",
             "a:b", "1.2.3.4", "1.2.3", "+1 23 45", "(555) 123-4567", "9", "12", "手机13812345678。", "ip 10.0.0.1:8080 or ::1",
             "mail x@y.cn ID 11010519491231002X tel 010-12345678 ip 2001:db8::1", "١٢٣٤٥٦٧٨٩٠١٢٣٤٥ Arabic-Indic digits", ""]
    for text in texts:
        assert mask_pii(text) == every_pattern(text), text


def test_boilerplate_patterns_anchored_or_not_match_as_one_search():
    from etl.clean.repetition import _anchored, _boilerplate

    assert _anchored(r"^share") and _anchored(r"^(?:a|b)c") and not _anchored(r"^a|b") and not _anchored(r"(?m)^a")
    assert not _anchored("all rights reserved") and not _anchored(r"x^")
    assert _anchored(r"^[|(]x\|y") and _anchored(r"^[]|]") and not _anchored(r"^a(?#(|)|b") and _anchored(r"^a(?#|)b")
    patterns = (r"^share$", r"^a|b", "all rights reserved", r"(?:^|x)copy", r"^(?:read more|点击查看)")
    lines = ["share", "Share ", "a share", "xb", "ab", "zzz", "All Rights Reserved 2020", "xcopy", "copy", "点击查看更多", "更多点击查看"]
    single = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    test = _boilerplate(patterns)
    assert [bool(test(line)) for line in lines] == [bool(single.search(line)) for line in lines]


def test_repetition_removal_counts_and_idempotence():
    text = ("这是一个被机器翻译重复的句子啊。这是一个被机器翻译重复的句子啊。后面还有别的内容。\n"
            "A line that repeats itself exactly.\nA line that repeats itself exactly.\n点击查看更多\n}\n}")
    out, counts = remove_repetition(text)
    assert out == "这是一个被机器翻译重复的句子啊。后面还有别的内容。\nA line that repeats itself exactly.\n}\n}"
    assert counts == {"num_boilerplate_lines_removed": 1, "num_dup_lines_removed": 1, "num_dup_sentences_removed": 1}
    assert remove_repetition(out)[0] == out


def _segments_cover(doc: Document) -> None:
    segs = doc.meta["segments"]
    assert segs[0][0] == 0 and segs[-1][1] == len(doc.text)
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))


def test_dialogue_tree_segments_and_roles():
    turns = [{"role": "Patient", "text": "I have had a  headache\u200b for days."},
             {"role": "Doctor", "text": "How bad is it? Call 13812345678."},
             {"role": "patient", "text": "Quite bad."}]
    doc = Document(id="d", text="", meta={"turns": turns})
    assert flatten_document(doc, DialogueConfig(), lambda t: mask_pii(normalize_text(t))[0]) is None
    assert doc.text == "Patient: I have had a headache for days.\nDoctor: How bad is it? Call <PHONE>.\nPatient: Quite bad." .replace("Patient: Quite", "patient: Quite")
    _segments_cover(doc)
    responses = [doc.text[a:b] for a, b, kind in doc.meta["segments"] if kind == "response"]
    assert responses == ["How bad is it? Call <PHONE>.\n"]
    assert [(n["id"], n["parent"]) for n in doc.meta["dialogue"]] == [("0", None), ("1", "0"), ("2", "1")]
    assert "turns" not in doc.meta


@pytest.mark.parametrize("turns,reason", [
    ([], "dialogue_no_turns"),
    ([{"role": "A", "text": "hi"}, {"role": "B", "text": "  "}], "dialogue_empty_turn"),
    ([{"role": "A", "text": "hi"}, {"role": "narrator", "text": "x"}], "dialogue_unknown_role"),
    ([{"role": "A", "text": "hi"}, {"role": "B", "text": "x", "parent": "9"}], "dialogue_bad_parent"),
    ([{"role": "A", "text": "hi"}], "dialogue_too_few_turns"),
])
def test_dialogue_validation_reasons(turns, reason):
    doc = Document(id="d", text="", meta={"turns": turns})
    assert flatten_document(doc, DialogueConfig(), str.strip) == reason


def test_dialogue_alternation_is_counted_or_dropped():
    turns = [{"role": "A", "text": "hi"}, {"role": "A", "text": "anyone?"}, {"role": "B", "text": "yes"}]
    doc = Document(id="d", text="", meta={"turns": turns})
    assert flatten_document(doc, DialogueConfig(), str.strip) is None and doc.meta["num_same_side_turns"] == 1
    doc = Document(id="d", text="", meta={"turns": turns})
    assert flatten_document(doc, DialogueConfig(require_alternation=True), str.strip) == "dialogue_not_alternating"


def test_instruction_flattening():
    doc = Document(id="i", text="", meta={"instruction": "Translate to English", "input": "你好", "output": "Hello"})
    assert flatten_document(doc, DialogueConfig(), str.strip) is None
    assert doc.text == "Translate to English\n你好\nHello"
    assert doc.meta["segments"] == [[0, 24, "prompt"], [24, 29, "response"]]
    missing = Document(id="j", text="", meta={"instruction": "Do it", "output": ""})
    assert flatten_document(missing, DialogueConfig(), str.strip) == "instruction_missing_output"
