"""The shared tokenizer's segmenters (jieba, rjieba) and the speed paths of the clean stage
(stdlib-``re`` treebank rules, compiled langid walk, quality-rule shortcuts): each must give
exactly what the reference gives, on fixed samples and on the bundled corpus slice."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from etl.clean import quality
from etl.clean.tokenize import TokenizerConfig, _latin, han_segmenter, read_user_dict, split_runs, tokenize

DATA = Path(__file__).resolve().parent / "data"
#: Han runs where both segmenters agree, with and without the HMM (Wikipedia, medical Q&A, statute, abstract).
SAMPLE = ("我们在北京大学学习机器学习", "患者近三个月反复出现头晕乏力症状", "中华人民共和国民法典第一千零四十二条规定禁止包办婚姻",
          "本文提出一种基于深度神经网络的中文分词方法", "武田信玄等人为主的故事", "他常在家看书", "日日日的出道作", "急急急谢谢",
          "欲知武器情报", "丙型肝炎病毒感染者应定期复查肝功能", "𠀀㐀中文", "ひらがなカタカナ日本語", "中文かな", "䶮鿪龘")
#: The documented differences (benchmarks/results/segment.json: 2 of 361,704 corpus runs with
#: the HMM): jieba's HMM splits an unknown two-character word at the very start of a run where
#: jieba-rs's keeps it whole.  Without the HMM the two agree.
KNOWN_HMM_DIFFERENCES = {"常在某特殊年龄段起病": (["常", "在", "某", "特殊", "年龄段", "起病"], ["常在", "某", "特殊", "年龄段", "起病"])}


def _texts(name: str) -> list[str]:
    return [json.loads(line).get("text") or "" for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("hmm", [True, False])
def test_rjieba_cuts_the_fixed_sample_exactly_as_jieba(hmm):
    jieba_cut = han_segmenter(TokenizerConfig(segmenter="jieba", hmm=hmm))
    rjieba_cut = han_segmenter(TokenizerConfig(segmenter="rjieba", hmm=hmm))
    for run in SAMPLE:
        assert rjieba_cut(run) == jieba_cut(run), run
    for run, (by_jieba, by_rjieba) in KNOWN_HMM_DIFFERENCES.items():
        assert jieba_cut(run) == by_jieba
        assert rjieba_cut(run) == (by_rjieba if hmm else by_jieba)


def test_rjieba_matches_jieba_on_every_han_run_of_the_corpus_slice():
    runs = [seg for name in ("general_zh", "domain_medical", "expert") for text in _texts(name) for kind, seg in split_runs(text) if kind == "han"]
    assert len(runs) > 5000
    for hmm in (True, False):
        jieba_cut = han_segmenter(TokenizerConfig(segmenter="jieba", hmm=hmm))
        rjieba_cut = han_segmenter(TokenizerConfig(segmenter="rjieba", hmm=hmm))
        differing = [run for run in runs if jieba_cut(run) != rjieba_cut(run)]
        assert differing == [], differing[:5]


def test_user_dictionary_lines_apply_in_both_segmenters(tmp_path):
    user = tmp_path / "user.dict"
    user.write_text("\ufeff精炼语料工具包 100 n\n中共有\n敲击乐 nz\n\n武器情报 20\n", encoding="utf-8")
    assert read_user_dict(str(user)) == [("精炼语料工具包", 100, "n"), ("中共有", None, None), ("敲击乐", None, "nz"), ("武器情报", 20, None)]
    text = "精炼语料工具包很好用，本作中共有两种敲击乐和武器情报"
    for name in ("jieba", "rjieba"):
        plain = tokenize(text, TokenizerConfig(segmenter=name))
        with_dict = tokenize(text, TokenizerConfig(segmenter=name, user_dicts=(str(user),)))
        assert not {"精炼语料工具包", "中共有", "武器情报", "敲击乐"} & set(plain)
        assert {"精炼语料工具包", "中共有", "武器情报", "敲击乐"} <= set(with_dict), name
    both = [tokenize(text, TokenizerConfig(segmenter=name, user_dicts=(str(user),))) for name in ("jieba", "rjieba")]
    assert both[0] == both[1]


def test_unknown_segmenter_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="tokenizer.segmenter"):
        TokenizerConfig(segmenter="pkuseg")


TREEBANK_TRICKY = ['He said "can\'t stop" (3.5 $) -- ok.', "'Tis the U.S.A.'s gonna... wanna 'quote' end.", "a:b, c:1 [x] {y} <z> 50% @me #tag & co;",
                   "“Curly” ‘quotes’ «guillemets» — dash – en … done!?", "Mr. Smith's O'Neill won't, y'know, 1,000.00.", "",
                   'D\'ye "GIMME" Cannot MORE\'N gOtTa lemme Wanna\tnow \'TWAS', "ſo 'tiſ CANNOT gımme", "\"x\" ''y'' ``z``"]
#: Fragments the treebank rules look at, for random sentences: quotes of every kind, the
#: punctuation each rule matches, contraction letters in both cases, the four characters that
#: IGNORECASE folds to ASCII letters, whitespace of several kinds, digits next to : and ,.
TREEBANK_FRAGMENTS = ['"', "'", "''", "`", "``", "«", "»", "“", "”", "‘", "’", "„", ".", "..", "...", ",", ":", ";", "@", "#", "$", "%",
                      "&", "?", "!", "*", "(", ")", "[", "]", "{", "}", "<", ">", "-", "--", "\u2012", "\u2013", "\u2014", "\u2015",
                      " ", " ", " ", "\t", "\n", "1", "3,5", "10:30", "a", "word", "can", "not", "cannot", "d", "'ye", "gim", "me",
                      "gon", "na", "got", "ta", "lem", "more", "'n", "wan", "'t", "is", "was", "'s", "'S", "'m", "'d", "'ll", "'re",
                      "'ve", "n't", "N'T", "CAN", "NOT", "Tis", "İ", "ı", "ſ", "\u212a", "é", "中"]


def test_fast_treebank_gives_nltks_tokens_on_the_corpus_slice_and_tricky_sentences():
    from nltk.tokenize import NLTKWordTokenizer

    fast, stock = _latin("treebank"), NLTKWordTokenizer()
    assert type(fast).__name__ == "TreebankTokenizer"
    # every NLTK rule has a guard (a rule without one still runs, but then nothing is saved)
    assert all(trigger is not None for *_, trigger in fast._before + fast._after)
    assert all(needle is not None for _, needle in fast._contractions)
    sentences = TREEBANK_TRICKY + [s for name in ("general_en", "domain_medical", "expert") for text in _texts(name) for s in text.split("\n")]
    for sentence in sentences:
        assert fast.tokenize(sentence) == stock.tokenize(sentence), sentence


def test_fast_treebank_gives_nltks_tokens_on_random_sentences_of_the_rules_characters():
    from nltk.tokenize import NLTKWordTokenizer

    fast, stock = _latin("treebank"), NLTKWordTokenizer()
    rng = random.Random(17)
    for _ in range(20000):
        sentence = "".join(rng.choice(TREEBANK_FRAGMENTS) for _ in range(rng.randint(1, 14)))
        assert fast.tokenize(sentence) == stock.tokenize(sentence), repr(sentence)


def test_only_four_non_ascii_characters_fold_to_ascii_letters_under_ignorecase():
    import re
    import sys

    from etl.clean.tokenize import _CASE_ODD

    letter = re.compile("(?i)[a-z]")
    assert {chr(c) for c in range(0x80, sys.maxunicode + 1) if letter.fullmatch(chr(c))} == _CASE_ODD


def test_compiled_langid_scores_are_bit_identical_to_py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from etl.clean.langid import _identifier

    stock = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    texts = ["", "  ", "a", "ABC DEF", "Ünïcödé façade", "日本語のテキスト", "\x00\x01"]
    texts += [t[:5000] for name in ("general_en", "general_zh", "domain_medical", "expert", "html_pages") for t in _texts(name)[:25]]
    for text in texts:
        assert np.array_equal(_identifier()._decide(text), stock._decide(text)), text[:40]


def _dup_reference(units, n):
    """Gopher's duplicate n-gram characters, written the plain way."""
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    seen, repeated, idx = set(), 0, 0
    while idx < len(grams):
        if grams[idx] in seen:
            repeated += sum(map(len, grams[idx]))
            idx += n
        else:
            seen.add(grams[idx])
            idx += 1
    return repeated


def test_repetition_shortcuts_give_the_plain_definitions():
    rng = random.Random(0)
    for _ in range(300):
        units = [rng.choice("abcdefgh")[: rng.randint(1, 3)] * rng.randint(1, 2) for _ in range(rng.randint(0, 40))]
        for n in range(1, 12):
            assert quality.dup_ngram_chars(units, n) == _dup_reference(units, n)
        top = {n: rng.choice([0.1, 0.3, 0.6, 1.0]) for n in rng.sample(range(1, 6), 3)}
        dup = {n: rng.choice([0.0, 0.05, 0.2]) for n in range(rng.randint(1, 6), 11)}
        sep = rng.choice(["", " "])
        plain = next((f"top_{n}_gram_frac" for n, f in sorted(top.items()) if len(units) >= n and quality.top_ngram_chars(units, n, sep) / 100 > f), None)
        plain = plain or next((f"dup_{n}_gram_frac" for n, f in sorted(dup.items()) if len(units) >= n and _dup_reference(units, n) / 100 > f), None)
        assert quality.repetition("x" * 100, units, top, dup, quality.RepetitionConfig(), unit_sep=sep) == plain


def test_compiled_ngram_counts_match_the_reference_on_real_units():
    from etl.clean.ngrams import NGramCounter

    for name, units_of in (("general_zh", quality._CJK_UNITS.findall), ("general_en", tokenize)):
        for text in _texts(name)[:40]:
            units = units_of(text)
            grams = NGramCounter(units)
            for n in range(1, 21):
                if len(units) >= n:
                    assert grams.top_chars(n, 1) == quality.top_ngram_chars(units, n, " ")
                    assert (grams.dup_chars(n) or 0) == quality.dup_ngram_chars(units, n)
    for token in ["", ".", "...", "“”", "a.", "，", "x", "#1", "—·～"]:
        assert quality._is_symbol(token) == all(ch in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~，。！？：；、（）【】《》“”‘’「」『』…—·～" for ch in token)
