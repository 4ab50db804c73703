"""Shards end to end on the test slices: writer, manifest, verify, reader resume, ranks, packing, errors."""
from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest

from shards.build import build_local
from shards.cli import main as shards_main
from shards.config import ShardsConfig
from shards.reader import ShardReader
from shards.tario import ShardError
from shards.tokenizer import load_tokenizer, tokenizer_fingerprint, train_bpe_tokenizer

SEQ = 64


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, data_dir):
    texts = []
    for name in ("general_zh", "general_en", "domain_medical", "expert"):
        with open(data_dir / f"{name}.jsonl", encoding="utf-8") as handle:
            texts += [json.loads(line).get("text", "") for line in handle][:150]
    return train_bpe_tokenizer(texts, 1000, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir):
    """120 general, 40 domain, 30 expert short records (cut to 600 characters) + 2 SFT records."""
    root = tmp_path_factory.mktemp("corpus")
    for name, group, n in (("general_en", "general", 120), ("domain_medical", "domain", 40), ("expert", "expert", 30)):
        (root / group).mkdir()
        with open(data_dir / f"{name}.jsonl", encoding="utf-8") as src, open(root / group / f"{name}.jsonl", "w", encoding="utf-8") as dst:
            for line in list(src)[:n]:
                rec = json.loads(line)
                rec["text"] = rec["text"][:600]
                dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(root / "domain" / "sft.jsonl", "w", encoding="utf-8") as dst:
        for i in range(2):
            dst.write(json.dumps({"id": f"sft-{i}", "domain": "medical", "instruction": "Name the organ.", "input": f"case {i}",
                                  "output": "The liver filters blood."}) + "\n")
    return root


def _build(corpus, tokenizer_dir, out, **overrides):
    cfg = ShardsConfig(samples_per_shard=overrides.pop("samples_per_shard", 12), **overrides)
    inputs = [f"{g}={corpus / g}" for g in ("general", "domain", "expert")]
    return build_local(inputs, str(out), cfg, {"test": True}, tokenizer_path=str(tokenizer_dir), num_partitions=2)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("set") / "shards"
    _build(corpus, tokenizer_dir, out)
    return out


def _reader(path, **kw):
    args = dict(dp_rank=0, dp_size=1, seq_len=SEQ, micro_batch_size=2, seed=7, shuffle_buffer=5, num_epochs=1)
    args.update(kw)
    return ShardReader(path, **args)


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_tokenizer_loads_with_transformers_and_fingerprint_tracks_vocab(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.decode(tok("病人 fever")["input_ids"]) == "病人 fever"
    other = train_bpe_tokenizer(["just a few words", "and more words"] * 10, 300, tmp_path / "other")
    assert tokenizer_fingerprint(load_tokenizer(tokenizer_dir)) == tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(load_tokenizer(other)) != tokenizer_fingerprint(tok)


def test_manifest_ratios_verify_and_tar_format(shard_set):
    manifest = json.loads((shard_set / "manifest.json").read_text())
    assert manifest["groups"] == ["general", "domain", "expert"]
    assert manifest["tokenizer"]["dtype"] == "uint16" and manifest["tokenizer"]["path"] == "tokenizer"
    tokens = manifest["tokens_by_group"]
    total = sum(tokens.values())
    for g, share in manifest["shares"].items():
        assert abs(tokens[g] - share * total) <= manifest["max_item_units"]
    assert {s["name"].rsplit("-", 2)[1] for s in manifest["shards"]} == {"00000", "00001"}
    assert shards_main(["verify", str(shard_set), "--deep"]) == 0
    with tarfile.open(shard_set / manifest["shards"][0]["name"]) as tar:
        members = tar.getmembers()
    assert all(isinstance(m.mtime, int) and not m.pax_headers for m in members)
    assert {m.name.split(".", 1)[1] for m in members} == {"npy", "json"}


def test_shards_are_readable_by_webdataset(shard_set):
    import webdataset as wds

    manifest = json.loads((shard_set / "manifest.json").read_text())
    urls = [str(shard_set / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == manifest["num_samples"]
    assert sum(len(s["npy"]) for s in samples) == manifest["num_tokens"]
    assert {s["json"]["group"] for s in samples} == {"general", "domain", "expert"}


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("dp_rank,dp_size", [(0, 1), (1, 2)])
def test_resumed_stream_equals_uninterrupted(shard_set, num_workers, dp_rank, dp_size):
    full = list(_reader(shard_set, num_workers=num_workers, dp_rank=dp_rank, dp_size=dp_size))
    assert len(full) >= 12
    for position in (0, 1, len(full) // 2 + 1, len(full) - 3):
        first = _reader(shard_set, num_workers=num_workers, dp_rank=dp_rank, dp_size=dp_size)
        it = iter(first)
        for _ in range(position):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = _reader(shard_set, num_workers=num_workers, dp_rank=dp_rank, dp_size=dp_size)
        resumed.load_state_dict(state)
        got = list(resumed)
        assert len(got) == len(full) - position
        assert all(_equal(a, b) for a, b in zip(got[:6], full[position:position + 6]))
        assert resumed.tokens_by_domain() == _reader_tokens(full)


def _reader_tokens(batches):
    counts = np.zeros(3, dtype=np.int64)
    for b in batches:
        counts += np.bincount(b["domain_ids"].reshape(-1) + 1, minlength=4)[1:]
    return dict(zip(["general", "domain", "expert"], counts.tolist()))


def test_dataloader_workers_give_the_in_process_stream(shard_set):
    torch_data = pytest.importorskip("torch.utils.data")

    class Wrapped(torch_data.IterableDataset):
        def __init__(self, reader):
            self.reader = reader

        def __iter__(self):
            return iter(self.reader)

    expected = list(_reader(shard_set, num_workers=2))
    resumed = _reader(shard_set, num_workers=2)
    state = _reader(shard_set, num_workers=2)
    it = iter(state)
    for _ in range(5):
        next(it)
    resumed.load_state_dict(state.state_dict())
    loader = torch_data.DataLoader(Wrapped(resumed), batch_size=None, num_workers=2)
    got = [{k: v.numpy() for k, v in b.items()} for b in loader]
    assert len(got) == len(expected) - 5
    assert all(_equal(a, b) for a, b in zip(got, expected[5:]))


def test_data_parallel_partitions_are_disjoint_complete_and_equal(tmp_path, corpus, tokenizer_dir):
    shard_set = tmp_path / "stop"
    _build(corpus, tokenizer_dir, shard_set, on_exhausted="stop")  # no repeated documents
    manifest = json.loads((shard_set / "manifest.json").read_text())
    dp = 3
    readers = [_reader(shard_set, dp_rank=r, dp_size=dp, num_workers=2) for r in range(dp)]
    shard_sets = [set(s for lane in r._layout(0)[0] for s in lane) for r in readers]
    assert set.union(*shard_sets) == set(range(len(manifest["shards"])))
    assert sum(len(s) for s in shard_sets) == len(manifest["shards"])
    streams = [list(r) for r in readers]
    assert len({len(s) for s in streams}) == 1  # no rank runs out first
    rows = [{b["tokens"][i].tobytes() + b["labels"][i].tobytes() for b in s for i in range(len(b["tokens"]))} for s in streams]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    consumed = sum(sum(r.tokens_by_domain().values()) for r in readers)
    assert consumed >= 0.5 * manifest["num_tokens"]


def test_no_token_predicts_across_a_document_boundary(shard_set):
    eos = json.loads((shard_set / "manifest.json").read_text())["tokenizer"]["eos_id"]
    for batch in _reader(shard_set, num_workers=0):
        tokens, mask, seg, pos = batch["tokens"], batch["loss_mask"], batch["segment_ids"], batch["position_ids"]
        assert not mask[tokens == eos].any()  # EOS never predicts the next document's first token
        after_eos = np.zeros_like(tokens, dtype=bool)
        after_eos[:, 1:] = (tokens[:, :-1] == eos) & (seg[:, 1:] >= 0)
        assert (pos[after_eos] == 0).all()
        assert (seg[:, 1:][after_eos[:, 1:]] == seg[:, :-1][after_eos[:, 1:]] + 1).all()
        assert (mask[seg < 0] == 0).all() and (batch["domain_ids"][seg < 0] == -1).all()
        assert (batch["labels"][:, :-1] == tokens[:, 1:]).all()


def test_prepacked_shards_read_like_unpacked_ones(tmp_path, corpus, tokenizer_dir):
    out = tmp_path / "packed"
    manifest = _build(corpus, tokenizer_dir, out, pack_seq_len=SEQ)
    assert shards_main(["verify", str(out), "--deep"]) == 0
    batches = list(_reader(out, num_workers=2))
    eos = manifest["tokenizer"]["eos_id"]
    assert batches and all(not b["loss_mask"][b["tokens"] == eos].any() for b in batches)
    with pytest.raises(ValueError, match="packed for seq_len"):
        _reader(out, seq_len=SEQ * 2)


def test_sft_records_mask_the_prompt(shard_set, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    manifest = json.loads((shard_set / "manifest.json").read_text())
    found = 0
    for batch in _reader(shard_set, num_workers=0, micro_batch_size=1):
        text = tok.decode(batch["tokens"][0])
        if "Name the organ." in text and "The liver filters blood." in text:
            targets = batch["labels"][0][batch["loss_mask"][0] == 1]
            assert "liver filters blood" in tok.decode(targets)
            assert "Name the organ" not in tok.decode(targets) and "case" not in tok.decode(targets)
            found += 1
    assert found >= 1 and manifest["docs_by_group"]["domain"] >= 42


def test_corrupt_or_missing_shard_is_named(tmp_path, shard_set):
    broken = tmp_path / "broken"
    shutil.copytree(shard_set, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    first, second = manifest["shards"][0]["name"], manifest["shards"][1]["name"]
    data = bytearray((broken / first).read_bytes())
    data[700:720] = b"\xff" * 20  # same size, different bytes
    (broken / first).write_bytes(bytes(data))
    assert shards_main(["verify", str(broken)]) == 1
    with pytest.raises(ShardError, match=first):
        list(_reader(broken, verify_checksums=True, shuffle_buffer=1))
    (broken / second).write_bytes((broken / second).read_bytes()[:500])
    with pytest.raises(ShardError, match=second):
        _reader(broken)
    (broken / second).unlink()
    with pytest.raises(ShardError, match=f"{second} is missing"):
        _reader(broken)


def test_verify_fails_when_ratios_disagree_with_weights(tmp_path, shard_set, capsys):
    changed = tmp_path / "ratio"
    shutil.copytree(shard_set, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["shares"] = {"general": 0.5, "domain": 0.3, "expert": 0.2}
    (changed / "manifest.json").write_text(json.dumps(manifest))
    assert shards_main(["verify", str(changed)]) == 1
    assert "group 'general'" in capsys.readouterr().err
    assert shards_main(["verify", str(tmp_path / "nothing")]) == 2


def test_long_documents_are_split_into_chunks_with_masks_and_ratio(tmp_path, corpus, tokenizer_dir):
    from shards.samples import Sample, split_sample

    tokens = np.arange(2049, dtype=np.int64)
    target = (np.arange(2049) % 3 == 0).astype(np.uint8)
    chunks = split_sample(Sample("doc", "medical", "domain", "s", "en", tokens, target), 1024)
    assert [c.id for c in chunks] == ["doc#c0", "doc#c1", "doc#c2"]
    assert [c.num_tokens for c in chunks] == [683, 683, 683]  # near-equal, none a stray EOS
    assert np.array_equal(np.concatenate([c.tokens for c in chunks]), tokens)
    assert np.array_equal(np.concatenate([c.target for c in chunks]), target)
    assert split_sample(chunks[0], 0) == [chunks[0]] and split_sample(chunks[0], 683) == [chunks[0]]

    out = tmp_path / "chunked"
    manifest = _build(corpus, tokenizer_dir, out, max_doc_tokens=40)
    assert max(s["max_doc_tokens"] for s in manifest["shards"]) <= 40 and manifest["max_item_units"] <= 40
    whole = _build(corpus, tokenizer_dir, tmp_path / "whole", max_doc_tokens=0)
    assert whole["max_item_units"] > 100
    ids = {b["json"]["id"] for b in _webdataset_samples(out, manifest)}
    parents = {i.split("#c")[0] for i in ids}
    assert parents == {b["json"]["id"] for b in _webdataset_samples(tmp_path / "whole", whole)}
    long_id = next(i for i in ids if i.endswith("#c2"))
    assert {f"{long_id[:-1]}0", f"{long_id[:-1]}1"} <= ids
    # every plan prefix is within one chunk (40 tokens) of the target shares
    slots = sorted(_webdataset_samples(out, manifest), key=lambda s: s["json"]["slot"])
    consumed, worst = dict.fromkeys(manifest["groups"], 0), 0.0
    for s in slots:
        consumed[s["json"]["group"]] += len(s["npy"])
        total = sum(consumed.values())
        worst = max(worst, max(abs(consumed[g] - manifest["shares"][g] * total) for g in consumed))
    assert worst <= 40
    # SFT chunks keep their masks aligned: the response tokens are the masked ones
    tok = load_tokenizer(tokenizer_dir)
    sft = [s for s in slots if s["json"]["id"].startswith("sft-0")]
    text = tok.decode(np.concatenate([s["npy"] for s in sft]))
    targets = np.concatenate([s["npy"][s["mask.npy"] == 1] for s in sft if "mask.npy" in s])
    assert "The liver filters blood." in text and "liver filters blood" in tok.decode(targets)
    assert "Name the organ" not in tok.decode(targets)
    assert shards_main(["verify", str(out), "--deep"]) == 0


def _webdataset_samples(path, manifest):
    import webdataset as wds

    return list(wds.WebDataset([str(path / s["name"]) for s in manifest["shards"]], shardshuffle=False).decode())


def test_shards_are_cut_at_equal_tokens_with_a_minimum_count(tmp_path, corpus, tokenizer_dir):
    from shards.build import shard_cuts

    sizes = np.full(100, 30)
    assert shard_cuts(sizes, ShardsConfig(shard_tokens=1000, min_shards=2)) == [0, 33, 67, 100]  # 3000 tokens / 1000
    assert shard_cuts(sizes, ShardsConfig(shard_tokens=1000, min_shards=4)) == [0, 25, 50, 75, 100]
    cuts = shard_cuts(sizes, ShardsConfig(min_shards=8))
    assert len(cuts) == 9 and max(np.diff(cuts)) - min(np.diff(cuts)) <= 1
    assert shard_cuts(np.full(3, 5), ShardsConfig(min_shards=8)) == [0, 1, 2, 3]  # never more shards than slots
    manifest = _build(corpus, tokenizer_dir, tmp_path / "even", samples_per_shard=0, min_shards=6, max_doc_tokens=64)
    tokens = [s["num_tokens"] for s in manifest["shards"]]
    assert len(tokens) == 6 and max(tokens) - min(tokens) <= 2 * 64


def test_indexed_reading_equals_decoding_whole_shards(shard_set):
    manifest = json.loads((shard_set / "manifest.json").read_text())
    legacy = dict(manifest, root=str(shard_set), shards=[{k: v for k, v in s.items() if not k.startswith("index")} for s in manifest["shards"]])
    for workers in (0, 2):
        fast = list(_reader(shard_set, num_workers=workers, shuffle_buffer=4))
        slow = list(_reader(legacy, num_workers=workers, shuffle_buffer=4))
        assert len(fast) == len(slow) and all(_equal(a, b) for a, b in zip(fast, slow))
        for position in (1, len(fast) // 2, len(fast) - 1):
            resumed = _reader(shard_set, num_workers=workers, shuffle_buffer=4)
            resumed.load_state_dict(resumed.state_dict() | {"consumed_batches": position})
            assert all(_equal(a, b) for a, b in zip(resumed, fast[position:]))
    index = shard_set / manifest["shards"][0]["index"]
    index.write_bytes(index.read_bytes()[:-16])
    with pytest.raises(ShardError, match=manifest["shards"][0]["name"]):
        list(_reader(shard_set, shuffle_buffer=4))


def test_a_flipped_bit_in_a_token_payload_stops_the_default_reader(tmp_path, corpus, tokenizer_dir):
    import zlib

    from shards.tario import index_path_of

    shard_set = tmp_path / "set"  # its own set: another test truncates the module's index files
    _build(corpus, tokenizer_dir, shard_set)
    broken = tmp_path / "flipped"
    shutil.copytree(shard_set, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    name = manifest["shards"][0]["name"]
    index = np.load(index_path_of(broken / name))
    data = bytearray((broken / name).read_bytes())
    assert index.shape[1] == 5 and all(zlib.crc32(data[s:e]) == c for s, e, _, _, c in index.tolist())
    start = int(index[3, 0])
    data[start + 512 + 130] ^= 0x01  # one bit of a token id of sample 3 (its .npy payload, past the .npy header)
    (broken / name).write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{name} .*\(sample 3\): members \S+\.npy, \S+\.json \(key \d+\) fail the CRC-32"):
        list(_reader(broken, shuffle_buffer=1))
    assert len(list(_reader(broken, shuffle_buffer=1, verify_checksums=False))) > 0  # unchecked, it would be trained on
    (broken / name).write_bytes((shard_set / name).read_bytes())
    idx = bytearray(index_path_of(broken / name).read_bytes())
    idx[-1] ^= 0x01  # the last sample's checksum column
    index_path_of(broken / name).write_bytes(bytes(idx))
    with pytest.raises(ShardError, match=rf"index .*{name}.*sha256 differs from the manifest"):
        list(_reader(broken, shuffle_buffer=1))


def test_trainer_reads_shards_with_checksums_by_default():
    from trainer.config import DataConfig

    assert DataConfig().verify_checksums is True
