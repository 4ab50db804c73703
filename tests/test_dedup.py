"""Dedup core: datasketch-identical signatures, LSH parameters, exact surviving ids, the index."""
from __future__ import annotations

import datasketch
import numpy as np
import pytest
from datasketch.lsh import _optimal_param
from dedup_fixtures import DEDUP_PARAMS, EXPECTED_KEPT, EXPECTED_REJECTED, THRESHOLD, crafted_documents, write_jsonl, write_params

from etl.core.document import Document
from etl.dedup import minhash
from etl.dedup.cluster import (
    DedupConfig,
    DedupIndex,
    Features,
    UnionFind,
    append_to_index,
    bucket_edges,
    dedup_against_index,
    dedup_documents,
    dedup_normalize,
    dedup_normalize_all,
    exact_key,
    features_of,
    keep_rank,
    load_index,
    main,
    near_clusters,
    shared_members,
    shingle_hashes,
    shingle_strings,
    shingle_units,
)
from etl.io.records import read_parquet_dir


def _jaccard(x: set, y: set) -> float:
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def sample_texts(data_dir):
    import json

    texts = []
    for name in ("general_zh.jsonl", "general_en.jsonl", "domain_medical.jsonl"):
        with open(data_dir / name, encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(4), handle)]
    return texts + ["短", "a b", "Mixed 中文和 English words 混合 text."]


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("hash_function", ["fast", "sha1"])
def test_signatures_equal_datasketch(sample_texts, scheme, hash_function):
    config = DedupConfig(scheme=scheme, hash_function=hash_function, num_perm=96, seed=11)
    perms = minhash.make_permutations(config.num_perm, config.seed, scheme)
    ours = minhash.signatures([shingle_hashes(t, config) for t in sample_texts], perms)
    hashfunc = minhash.fast_shingle_hash if hash_function == "fast" else (lambda s: datasketch.hashfunc.sha1_hash32(s.encode("utf-8")))
    for text, sig in zip(sample_texts, ours):
        ref = datasketch.MinHash(num_perm=96, seed=11, scheme=scheme, hashfunc=hashfunc)
        ref.update_batch(list(shingle_strings(text, config)))
        np.testing.assert_array_equal(ref.hashvalues.astype(np.uint64), sig.astype(np.uint64))


def test_fast_hash_matches_vectorised_shingle_hashes(sample_texts):
    config = DedupConfig()
    for text in sample_texts:
        scalar = sorted(minhash.fast_shingle_hash(s) for s in shingle_strings(text, config))
        assert sorted(set(shingle_hashes(text, config).tolist())) == sorted(set(scalar))


#: Texts that exercise the compiled path's edges: full-width forms and ideographic space (the
#: NFKC shortcut), '_' (a regex word character that is not alphanumeric), non-ASCII letters,
#: astral Han, compatibility characters, Unicode spaces, empty and one-character texts.
TRICKY_TEXTS = ["全角，标点！（括号）\u3000空格ＡＢＣ１２３～", "snake_case __init__ _ __ a_b x_", "naïve café Ωmega ДОМ дом Ärger",
                "\U00020000\U00020001\U00020002\U00020003\U00020004\U00020005 astral 𠀀", "ﬁnd ½ ① ㍿ Ⅻ ｶﾀｶﾅ",
                "tab\tand\u00a0nbsp\u2003em\u2028line", "", "   ", "x", "中", "ＡＢ\u0301 wide then combining accent"]


#: Normalisation edge cases for the compiled pass: multi-code-point casefolds (ß, İ), final
#: sigma, combining sequences that compose or reorder, Hangul jamo that compose, a lone
#: surrogate, images longer than their code point (℃, …, Ⅱ, Ǆ, U+FDFA's 18), whitespace
#: between expansions.
NORMALIZE_TEXTS = ["Straße ΣΑΣ İstanbul ǅ", "e\u0301 a\u0308\u0323 \u1100\u1161\u11a8 가\u11a8", "\ud800 lone", "℃…ⅡǄ\ufdfa",
                   "x\u0344y \u0f73\u0f75", "\ufdfa" * 50, "  …  … ", "①\u2002②\u00a0\u00b5"]


def test_normalize_texts_equals_normalize_text(sample_texts):
    import random

    from etl.dedup.cluster import normalize_batch
    from etl.dedup.minhash_jit import code_points

    rng = random.Random(0)
    ranges = [(0x20, 0x3000), (0xF900, 0x10000), (0x300, 0x370), (0x1100, 0x1200), (0xAC00, 0xAC40), (0x10000, 0x10500), (0x2000, 0x2200)]
    soup = ["".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(60))) for _ in range(3000)]
    texts = sample_texts + TRICKY_TEXTS + NORMALIZE_TEXTS + soup
    expected = [dedup_normalize(t) for t in texts]
    normalized, cps, offsets = normalize_batch(texts)
    assert normalized == expected
    expected_cps, expected_offsets = code_points(expected)  # the code points the shingle kernel reads
    np.testing.assert_array_equal(cps, expected_cps)
    np.testing.assert_array_equal(offsets, expected_offsets)
    assert dedup_normalize_all(["\ufdfa" * 100] * 3) == [dedup_normalize("\ufdfa" * 100)] * 3  # output longer than input: regrown


@pytest.mark.parametrize("char_ngram,word_ngram", [(5, 3), (1, 1), (3, 6)])
def test_compiled_features_equal_reference(sample_texts, char_ngram, word_ngram):
    from etl.dedup import minhash_jit

    config = DedupConfig(char_ngram=char_ngram, word_ngram=word_ngram, num_perm=128)
    texts = sample_texts + TRICKY_TEXTS
    reference = [shingle_hashes(t, config) for t in texts]
    hashes, offsets = minhash_jit.shingle_hashes([dedup_normalize(t) for t in texts], char_ngram, word_ngram,
                                                 int(minhash.CHAR_KIND_SEED), int(minhash.WORD_KIND_SEED))
    for i, ref in enumerate(reference):
        np.testing.assert_array_equal(hashes[offsets[i]:offsets[i + 1]], ref)
    feats = features_of([str(i) for i in range(len(texts))], texts, [0.0] * len(texts), config)
    perms = minhash.make_permutations(config.num_perm, config.seed, config.scheme)
    ref_sigs = minhash.signatures(reference, perms)
    np.testing.assert_array_equal(feats.sigs, ref_sigs)
    np.testing.assert_array_equal(feats.bands, minhash.band_keys(ref_sigs, *config.bands))
    assert feats.num_shingles.tolist() == [len(r) for r in reference]
    assert feats.exact_keys == [exact_key(t) for t in texts]


def test_compiled_signatures_equal_datasketch(sample_texts):
    config = DedupConfig(num_perm=64, seed=5)
    feats = features_of([str(i) for i in range(len(sample_texts))], sample_texts, [0.0] * len(sample_texts), config)
    for text, sig in zip(sample_texts, feats.sigs):
        ref = datasketch.MinHash(num_perm=64, seed=5, scheme="affine32", hashfunc=minhash.fast_shingle_hash)
        ref.update_batch(list(shingle_strings(text, config)))
        np.testing.assert_array_equal(ref.hashvalues.astype(np.uint64), sig.astype(np.uint64))


def test_compiled_xxh32_equals_xxhash():
    import xxhash

    from etl.dedup import minhash_jit

    buf = np.empty(4096, dtype=np.uint8)
    for word in ["", "a", "ab", "abc", "abcd", "abcdefghijklmno", "abcdefghijklmnop", "abcdefghijklmnopq", "naïve", "дом",
                 "\U00020000x", "z" * 1000]:
        data = word.encode("utf-8")
        buf[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        assert minhash_jit._xxh32(buf, len(data)) == xxhash.xxh32_intdigest(data), word


@pytest.mark.parametrize("threshold,num_perm", [(0.5, 128), (0.8, 128), (0.9, 128), (0.8, 64), (0.7, 256)])
def test_bands_chosen_like_datasketch(threshold, num_perm):
    assert minhash.optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert DedupConfig(threshold=threshold, num_perm=num_perm).bands == _optimal_param(threshold, num_perm, 0.2, 0.8)
    same_weights = DedupConfig(threshold=threshold, num_perm=num_perm, false_positive_weight=0.5, false_negative_weight=0.5)
    assert same_weights.bands == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert DedupConfig(num_bands=16, rows_per_band=8).bands == (16, 8)


def test_band_keys_equal_iff_band_values_equal():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(3, 12), dtype=np.uint32)
    sigs[1, :4] = sigs[0, :4]  # band 0 equal, bands 1-2 differ
    keys = minhash.band_keys(sigs, 3, 4)
    assert keys.dtype == np.int64 and keys.shape == (3, 3)
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1] and keys[0, 0] != keys[2, 0]


def test_shingles_chinese_chars_and_english_words():
    config = DedupConfig()
    assert shingle_strings("我们在北京学习 Machine   LEARNING, very well.", config) == {
        "我们在北京", "们在北京学", "在北京学习", "machine learning very", "learning very well"}
    assert shingle_strings("短文", config) == {"短文"}
    assert shingle_strings("!!! ???", config) == set()
    assert exact_key("Ｈｅｌｌｏ  World") == exact_key("hello world")


def test_crafted_fixture_relations(data_dir):
    docs = {d.id: shingle_strings(d.text, DedupConfig()) for d in crafted_documents(data_dir)}
    assert _jaccard(docs["en-a"], docs["en-b"]) >= 0.75 and _jaccard(docs["en-b"], docs["en-c"]) >= 0.75
    assert _jaccard(docs["en-a"], docs["en-c"]) < THRESHOLD  # only the chain joins a and c
    assert _jaccard(docs["en-a"], docs["en-f"]) < 0.4
    assert _jaccard(docs["zh-1"], docs["zh-2"]) > 0.9


def test_exact_surviving_ids_and_reasons(data_dir):
    out, result = dedup_documents(crafted_documents(data_dir), DedupConfig(**DEDUP_PARAMS))
    assert {d.id for d in out if not d.dropped} == EXPECTED_KEPT
    rejected = {d.id: (d.drop_reason, d.meta["duplicate_of"], d.meta.get("cluster_id")) for d in out if d.dropped}
    assert rejected == EXPECTED_REJECTED
    kept = {d.id: d for d in out}
    assert kept["en-c"].meta["cluster_id"] == "en-a" and "cluster_id" not in kept["en-d"].meta
    assert result.clusters == {"en-a": ["en-a", "en-b", "en-c"], "zh-1": ["zh-1", "zh-2"]}


def test_dissimilar_documents_never_merge(data_dir):
    import json

    with open(data_dir / "general_en.jsonl", encoding="utf-8") as handle:
        docs = [Document(f"d{i}", json.loads(line)["text"]) for i, line in enumerate(handle)]
    out, result = dedup_documents(docs, DedupConfig())
    assert [d.id for d in out if d.dropped and d.drop_reason == "near_duplicate"] == []


def test_keep_rules():
    long = Document("b", "x" * 10, meta={"quality_score": 0.2, "timestamp": "2024-01-02"})
    short = Document("a", "x" * 5, meta={"quality_score": 0.9, "timestamp": "2023-12-31T23:00:00Z"})
    bare = Document("0", "x")
    for rule, winner in (("longest", "b"), ("quality", "a"), ("earliest", "a")):
        config = DedupConfig(keep=rule)
        assert min((keep_rank(d, config), d.id) for d in (long, short, bare))[1] == winner
    assert keep_rank(bare, DedupConfig(keep="quality")) == float("inf")


def test_a_nan_rank_loses_whatever_the_input_order():
    """A quality of "nan" parses to NaN: it ranks after every number (Spark's order), so the
    same copy is kept in any order -- Python's min over (NaN, id) tuples depends on the order.
    Exact copies and near copies (one character changed in a long text) alike."""
    import itertools

    text = "".join(f"第{i}段：同一篇文章的正文，在三个来源里几乎一字不差。Paragraph {i} of the same article. " for i in range(12))
    quality = {"a": "nan", "b": 0.1, "c": 0.5}
    for edit in (False, True):
        texts = {k: text[:40 * n] + "改" + text[40 * n + 1:] if edit else text for n, k in enumerate(quality, start=1)}
        for order in itertools.permutations(quality):
            batch = [Document(k, texts[k], meta={"quality_score": quality[k]}) for k in order]
            out, result = dedup_documents(batch, DedupConfig(keep="quality"))
            assert {d.id: (d.drop_reason, d.meta.get("duplicate_of")) for d in out if d.dropped} == {
                k: ("near_duplicate" if edit else "exact_duplicate", "c") for k in ("a", "b")}


def test_shared_members_are_the_buckets_with_two_rows_and_a_batch_document():
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(0, 40))
        keys = rng.integers(0, 12, n).astype(np.int64) - 6  # negative keys too: band keys are signed
        is_index = rng.random(n) < 0.4
        got = shared_members(keys, is_index)
        expected = [i for i in range(n) if (keys == keys[i]).sum() > 1 and (~is_index[keys == keys[i]]).any()]
        assert sorted(got.tolist()) == expected
        assert np.all(np.diff(keys[got]) >= 0)  # in key order


def test_near_clusters_find_the_buckets_a_dict_of_every_band_key_finds():
    """The candidate search sorts each band's keys (``shared_members``) instead of holding a
    dict entry per document and band: same edges, clusters and keepers as the dict, with index
    documents (only in buckets holding a batch document), an id in both, big buckets (stars)."""
    import collections

    rng = np.random.default_rng(11)
    for trial in range(30):
        n, m, num_bands = int(rng.integers(0, 60)), int(rng.integers(0, 25)), 4
        config = DedupConfig(num_bands=num_bands, rows_per_band=2, verify=False, max_pairs_bucket_size=int(rng.integers(2, 6)))
        ids = [f"d{i:03d}" for i in rng.permutation(n)]
        index_ids = [f"d{i:03d}" if rng.random() < 0.1 else f"h{i:03d}" for i in range(m)]
        bands = rng.integers(-4, 4, (n, num_bands)).astype(np.int64) * (trial + 1)
        index_bands = rng.integers(-4, 4, (m, num_bands)).astype(np.int64) * (trial + 1)
        feats = Features(ids=ids, exact_keys=[""] * n, ranks=rng.random(n).tolist(), num_shingles=np.ones(n, np.int64),
                         sigs=np.zeros((n, 4), np.uint32), bands=bands)
        index = DedupIndex(fingerprint={}, ids=index_ids, exact_keys=[""] * m, sigs=np.zeros((m, 4), np.uint32), bands=index_bands)
        survivors = sorted(rng.choice(n, size=n // 2, replace=False).tolist()) if n else []
        got = near_clusters(feats, survivors, index, config)
        # the reference: a dict entry per (band, key) of every survivor, index documents added to touched buckets
        kind = {ids[i]: "batch" for i in survivors} | {h: "index" for h in index_ids}
        buckets, edges = collections.defaultdict(list), set()
        for i in survivors:
            for band, key in enumerate(bands[i].tolist()):
                buckets[(band, key)].append(ids[i])
        for j, h in enumerate(index_ids):
            for band, key in enumerate(index_bands[j].tolist()):
                if (band, key) in buckets:
                    buckets[(band, key)].append(h)
        for members in buckets.values():
            if len(members) > 1:
                edges.update(e for e in bucket_edges(sorted(members), config.max_pairs_bucket_size) if "batch" in (kind[e[0]], kind[e[1]]))
        uf = UnionFind()
        for a, b in sorted(edges):
            uf.union(a, b)
        assert got.num_candidate_edges == got.num_verified_edges == len(edges)
        assert got.clusters == uf.groups()
        assert got.in_index == {x for members in uf.groups().values() for x in members if kind[x] == "index"}


def test_bucket_edges_rule_and_union_find():
    assert list(bucket_edges(["a", "b", "c"], 3)) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert list(bucket_edges(["a", "b", "c"], 2)) == [("a", "b"), ("a", "c")]
    uf = UnionFind()
    for x, y in [("c", "d"), ("e", "d"), ("b", "a"), ("d", "b")]:
        uf.union(x, y)
    uf.union("x", "y")
    assert uf.groups() == {"a": ["a", "b", "c", "d", "e"], "x": ["x", "y"]}


def test_config_validation():
    with pytest.raises(ValueError, match="dedup.scheme"):
        DedupConfig(scheme="affine64")
    with pytest.raises(ValueError, match="num_bands"):
        DedupConfig(num_bands=30, rows_per_band=10)
    with pytest.raises(ValueError, match="dedup.keep"):
        DedupConfig(keep="newest")


def test_incremental_index(tmp_path, data_dir):
    config = DedupConfig(**DEDUP_PARAMS)
    docs = crafted_documents(data_dir)
    history = [d for d in docs if d.id in ("en-a", "zh-3", "en-d")]
    batch = [Document(d.id, d.text) for d in docs if d.id in ("en-b", "en-f", "zh-1", "p-1")]
    batch.append(Document("new-copy", history[0].text.upper()))
    index_dir = tmp_path / "index"
    assert append_to_index(history, index_dir, config) == 3
    out = list(dedup_against_index(batch, index_dir, config))
    rejected = {d.id: (d.drop_reason, d.meta["duplicate_of"]) for d in out if d.dropped}
    assert rejected == {"en-b": ("near_duplicate", "en-a"), "new-copy": ("exact_duplicate", "en-a")}
    assert append_to_index(out, index_dir, config) == 3
    index = load_index(index_dir, config)
    assert sorted(index.ids) == ["en-a", "en-d", "en-f", "p-1", "zh-1", "zh-3"]
    again = list(dedup_against_index([Document("z", batch[2].text), Document("zh-1", batch[2].text)], index, config))
    assert [(d.drop_reason, d.meta["duplicate_of"]) for d in again] == [("exact_duplicate", "zh-1")] * 2  # re-sent id too
    with pytest.raises(ValueError, match="other dedup settings"):
        load_index(index_dir, DedupConfig(**{**DEDUP_PARAMS, "num_perm": 64, "num_bands": 8}))


def test_a_long_running_consumers_index_sees_the_rows_it_appended(tmp_path, data_dir):
    """The Kafka ingest loads the index once, deduplicates each window against it and appends
    the window's kept documents to it in memory: the next window is checked against them too
    (the index's id and exact-key lookups are rebuilt when it grows)."""
    config = DedupConfig(**DEDUP_PARAMS)
    docs = {d.id: d for d in crafted_documents(data_dir)}
    index_dir = tmp_path / "index"
    append_to_index([docs["zh-3"], docs["en-d"]], index_dir, config)
    index = load_index(index_dir, config)
    first = list(dedup_against_index([Document("en-a", docs["en-a"].text)], index, config))
    assert not first[0].dropped and index.positions() == {"zh-3": 0, "en-d": 1}
    assert append_to_index(first, index_dir, config, index) == 1
    assert index.positions() == {"zh-3": 0, "en-d": 1, "en-a": 2} and index.first_of_exact_key()[exact_key(docs["en-a"].text)] == "en-a"
    second = list(dedup_against_index([Document("w2-exact", docs["en-a"].text.upper()), Document("w2-near", docs["en-b"].text)], index, config))
    assert {d.id: (d.drop_reason, d.meta["duplicate_of"]) for d in second} == {
        "w2-exact": ("exact_duplicate", "en-a"), "w2-near": ("near_duplicate", "en-a")}


def test_local_runner_cli(tmp_path, data_dir):
    src = write_jsonl(crafted_documents(data_dir), tmp_path / "in" / "docs.jsonl")
    params = write_params(tmp_path / "params.yaml")
    report = main(["--input", str(src.parent), "--output", str(tmp_path / "out"), "--params", str(params)])
    assert {d.id for d in read_parquet_dir(tmp_path / "out" / "kept")} == EXPECTED_KEPT
    assert report["drop_reasons"] == {"exact_duplicate": 2, "near_duplicate": 3}
    assert report["dedup"]["clusters"]["size_histogram"] == {"2": 1, "3": 1}
    assert report["dedup"]["clusters"]["largest_clusters"][0]["kept_id"] == "en-c"


def test_word_fast_path_equals_shared_tokenizer(sample_texts):
    from etl.clean.tokenize import TokenizerConfig, is_word, tokenize
    from etl.dedup.cluster import _HAN_RUN, dedup_normalize

    config = DedupConfig(english="wordpunct")
    for text in sample_texts:
        rest = _HAN_RUN.sub(" ", dedup_normalize(text))
        expected = [t for t in tokenize(rest, TokenizerConfig(english="wordpunct")) if is_word(t)]
        assert shingle_units(text, config)[1] == expected


def test_the_window_benchmark_compares_equal_edges():
    """``benchmarks.dedup.window``: the plain dict search it times finds the same edges as
    ``near_clusters`` (the benchmark raises otherwise), and the copies planted are found."""
    from benchmarks.dedup.window import bench

    row = bench(5000, 200, 1)
    assert row["edges"] == 10 and row["jinglian"]["next_windows_cpu_s"] > 0 and row["plain_dict"]["peak_alloc_mb"] > 0
