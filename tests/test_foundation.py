"""The step contract, stage statistics, config building, atomic writes and the shared tokenizer."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from etl.clean.tokenize import TokenizerConfig, count_han, tokenize, words
from etl.core.atomic import OUTPUT_MARKER, atomic_dir, atomic_file, remove_stale_temporaries
from etl.core.config import build_config, load_params, params_hash
from etl.core.document import Document
from etl.core.stats import StageStats
from etl.core.step import Pipeline, batch_step, filter_step, map_step, split_kept_rejected
from etl.io.records import read_parquet_dir
from etl.runner import PipelinePool, run_pipeline, write_stage_output


def _docs(n: int) -> list[Document]:
    return [Document(id=f"d{i}", text="x" * i, domain="general" if i % 2 else "expert") for i in range(n)]


def _short(doc: Document) -> str | None:
    return "too_short" if len(doc.text) < 3 else None


def _odd(doc: Document) -> str | None:
    return "odd_length" if len(doc.text) % 2 else None


class _LoggingFactory:
    """A pipeline that appends "<pid> <doc id>" to ``path`` for every document it sees."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self) -> Pipeline:
        def log(doc):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {doc.id}\n")
            return None
        return Pipeline([filter_step("log", log)])


def _factory() -> Pipeline:
    return Pipeline([filter_step("short", _short), map_step("upper", _upper), filter_step("odd", _odd)])


def _upper(doc: Document) -> Document:
    doc.text = doc.text.upper()
    return doc


def test_pipeline_first_reason_wins_and_dropped_docs_bypass_later_steps():
    seen = []

    def spy(doc):
        seen.append(doc.id)
        return None

    pipe = Pipeline([filter_step("short", _short), filter_step("odd", _odd), filter_step("spy", spy)])
    kept, rejected = split_kept_rejected(pipe(_docs(8)))
    assert [d.id for d in kept] == ["d4", "d6"]
    assert {d.id: (d.drop_reason, d.meta["drop_step"]) for d in rejected} == {
        "d0": ("too_short", "short"), "d1": ("too_short", "short"), "d2": ("too_short", "short"),
        "d3": ("odd_length", "odd"), "d5": ("odd_length", "odd"), "d7": ("odd_length", "odd")}
    assert seen == ["d4", "d6"]


def test_per_document_pipelines_run_in_blocks_with_the_streaming_order_and_results():
    calls = []

    def trace(name):
        def fn(doc):
            calls.append((name, doc.id))
            return None
        return fn

    steps = [filter_step("short", _short), filter_step("a", trace("a")), map_step("upper", _upper), filter_step("odd", _odd),
             filter_step("b", trace("b"))]
    streamed = list(Pipeline(steps, block_size=1)(_docs(11)))
    stream_calls, calls[:] = calls[:], []
    blocked_pipe = Pipeline(steps, block_size=4)
    assert blocked_pipe.blocked and not Pipeline(steps, block_size=1).blocked
    blocked = list(blocked_pipe(iter(_docs(11))))
    assert [(d.id, d.text, d.drop_reason) for d in blocked] == [(d.id, d.text, d.drop_reason) for d in streamed]
    assert [d.id for d in blocked] == [f"d{i}" for i in range(11)]  # input order, dropped ones in place
    # step-major inside a block: the block's live documents all go through "a" before "b"
    assert calls == [("a", "d3"), ("a", "d4"), ("a", "d5"), ("a", "d6"), ("a", "d7"), ("b", "d4"), ("b", "d6"),
                     ("a", "d8"), ("a", "d9"), ("a", "d10"), ("b", "d8"), ("b", "d10")]
    assert stream_calls[:3] == [("a", "d3"), ("a", "d4"), ("b", "d4")]
    assert sorted(calls) == sorted(stream_calls)
    # a batch step (which may add or reorder documents) keeps the pipeline streaming
    assert not Pipeline([filter_step("short", _short), batch_step("aug", lambda b: b)]).blocked
    with pytest.raises(ValueError, match="block_size"):
        Pipeline(steps, block_size=0)


@pytest.mark.parametrize("workers", [1, 2])
def test_pipeline_pool_warms_every_worker_on_the_warm_up_documents_before_any_batch(tmp_path, workers):
    log = tmp_path / "seen.log"
    pool = PipelinePool(_LoggingFactory(log), workers=workers, batch_size=4, warm_up=[Document(id="warm", text="x")])
    try:
        out = list(pool(_docs(8)))
    finally:
        pool.close()
    assert [d.id for d in out] == [f"d{i}" for i in range(8)] and not any(d.dropped for d in out)
    seen = [line.split() for line in log.read_text().splitlines()]
    assert sorted(doc for _, doc in seen if doc != "warm") == sorted(f"d{i}" for i in range(8))
    pids = {pid for pid, _ in seen}
    for pid in pids:  # each process saw the warm-up document before its first real one
        mine = [doc for p, doc in seen if p == pid]
        assert mine[0] == "warm" and mine.count("warm") == 1
    parent = str(os.getpid())
    if workers == 1:
        assert pids == {parent}
    else:  # forked: the parent warms the module caches once, then each worker its own pipeline
        assert [doc for p, doc in seen if p == parent] == ["warm"] and 1 <= len(pids - {parent}) <= workers


def test_exceptions_follow_on_error_policy():
    def boom(doc):
        if doc.id == "d3":
            raise KeyError("missing")
        return None

    kept, rejected = split_kept_rejected(Pipeline([filter_step("boom", boom)])(_docs(5)))
    assert len(kept) == 4 and rejected[0].drop_reason == "error_KeyError" and rejected[0].meta["drop_step"] == "boom"
    with pytest.raises(RuntimeError, match=r"step 'boom' failed: KeyError"):
        list(Pipeline([filter_step("boom", boom, on_error="raise")])(_docs(5)))


def test_batch_step_may_add_documents_and_keeps_every_input():
    def add_variant(batch):
        out = []
        for d in batch:
            out.append(d)
            if len(d.text) > 5:
                out.append(Document(id=d.id + "~v", text=d.text[::-1], meta={"parent": d.id}))
        return out

    out = list(Pipeline([filter_step("short", _short), batch_step("aug", add_variant, batch_size=3)])(_docs(8)))
    assert sorted(d.id for d in out) == sorted([f"d{i}" for i in range(8)] + ["d6~v", "d7~v"])


def test_duplicate_step_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        Pipeline([filter_step("a", _short), filter_step("a", _odd)])


def test_local_runner_gives_same_output_for_any_worker_count(tmp_path):
    one = list(run_pipeline(_docs(40), _factory, workers=1))
    two = list(run_pipeline(_docs(40), _factory, workers=2, batch_size=7))
    assert [(d.id, d.text, d.drop_reason) for d in one] == [(d.id, d.text, d.drop_reason) for d in two]


def test_stage_output_layout_stats_and_no_record_lost(tmp_path):
    out = tmp_path / "stage"
    report = write_stage_output(run_pipeline(_docs(10), _factory), out, ["short", "upper", "odd"], progress=False)
    kept = list(read_parquet_dir(out / "kept"))
    rejected = list(read_parquet_dir(out / "rejected"))
    assert sorted(d.id for d in kept + rejected) == sorted(f"d{i}" for i in range(10))
    assert [d.text for d in kept] == ["XXXX", "XXXXXX", "XXXXXXXX"]
    stats = json.loads((out / "stats.json").read_text())
    from etl.core.stats import VOLATILE_KEYS
    assert stats == {k: v for k, v in report.items() if k not in VOLATILE_KEYS}  # wall times: timing.json
    assert "elapsed_s" in json.loads((out / "timing.json").read_text())
    assert stats["num_in"] == 10 and stats["num_kept"] == 3
    assert stats["drop_reasons"] == {"too_short": 3, "odd_length": 4}
    assert stats["steps"] == [{"step": "short", "in": 10, "dropped": 3, "out": 7},
                              {"step": "upper", "in": 7, "dropped": 0, "out": 7},
                              {"step": "odd", "in": 7, "dropped": 4, "out": 3}]
    assert stats["chars_out"] == 18 and stats["chars_in"] == sum(range(10))
    assert stats["by_domain"]["expert"] == {"in": 5, "kept": 3, "kept_chars": 18}
    assert not list(tmp_path.glob("stage.tmp-*"))


def test_stats_merge_is_order_independent():
    docs = list(_factory()(_docs(30)))
    whole = StageStats().add_all(docs).to_dict()
    a, b, c = StageStats().add_all(docs[:7]), StageStats().add_all(docs[7:19]), StageStats().add_all(docs[19:])
    assert StageStats().merge(c).merge(a).merge(b).to_dict() == whole


def test_crashed_writer_leaves_no_output_under_final_name(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.parquet").write_text("partial")
            raise RuntimeError("crash")
    assert not target.exists() and not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "f.json") as handle:
            handle.write("{")
            raise RuntimeError("crash")
    assert not list(tmp_path.iterdir())
    stale = tmp_path / "out.tmp-deadbeef"
    stale.mkdir()
    assert remove_stale_temporaries(target) == 1 and not stale.exists()


def test_rerun_replaces_previous_output_whole(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "old").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "new"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner:
    ratio: float = 0.5
    """A fraction."""

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
    n: int = 3
    names: tuple[str, ...] = ()
    mode: str | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_build_config_nested_and_errors_name_the_dotted_field():
    cfg = build_config(_Outer, {"n": 5, "names": ["a", "b"], "inner": {"ratio": 1}}, "sec")
    assert cfg == _Outer(n=5, names=("a", "b"), inner=_Inner(ratio=1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n = 4
    with pytest.raises(ValueError, match=r"sec: unknown key 'typo'"):
        build_config(_Outer, {"typo": 1}, "sec")
    with pytest.raises(ValueError, match=r"sec.n: expected an integer, got 'x'"):
        build_config(_Outer, {"n": "x"}, "sec")
    with pytest.raises(ValueError, match=r"sec.inner: ratio must be in \[0, 1\], got 2.0"):
        build_config(_Outer, {"inner": {"ratio": 2}}, "sec")
    with pytest.raises(ValueError, match=r"sec.n: expected an integer, got True"):
        build_config(_Outer, {"n": True}, "sec")


def test_repository_params_load_and_hash_is_stable():
    params = load_params()
    assert {"read", "tokenizer", "clean"} <= set(params)
    assert params_hash(params["read"]) == params_hash(dict(reversed(list(params["read"].items()))))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_params("/nonexistent/params.yaml")


def test_tokenizer_splits_chinese_by_words_and_english_by_treebank_rules():
    toks = tokenize("我们在北京大学学习 machine learning. Don't stop，好吗？")
    assert toks[:4] == ["我们", "在", "北京大学", "学习"]
    assert ["machine", "learning", ".", "Do", "n't", "stop", "，", "好", "吗", "？"] == toks[4:]
    assert words("你好，world!") == ["你好", "world"]
    assert tokenize("A-B", TokenizerConfig(english="wordpunct", lowercase=True)) == ["a", "-", "b"]
    assert count_han("abc中文かな") == 4


def test_jieba_user_dictionary_is_honoured(tmp_path):
    text = "精炼语料工具包很好用"
    assert "精炼语料工具包" not in tokenize(text)
    user = tmp_path / "user.dict"
    user.write_text("精炼语料工具包 100 n\n", encoding="utf-8")
    assert tokenize(text, TokenizerConfig(user_dicts=(str(user),)))[0] == "精炼语料工具包"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _WithMap:
    weights: dict[str, float] = dataclasses.field(default_factory=dict)


def test_config_mappings_are_read_only_and_picklable():
    import pickle

    cfg = build_config(_WithMap, {"weights": {"general": 7, "domain": 2}}, "mix")
    assert cfg.weights == {"general": 7.0, "domain": 2.0}
    with pytest.raises(TypeError, match="read-only"):
        cfg.weights["expert"] = 1.0
    assert pickle.loads(pickle.dumps(cfg)) == cfg and hash(cfg) == hash(pickle.loads(pickle.dumps(cfg)))
    with pytest.raises(ValueError, match=r"mix.weights.general: expected a number"):
        build_config(_WithMap, {"weights": {"general": "seven"}}, "mix")


def test_without_params_a_stage_reads_the_params_yaml_of_its_working_directory(tmp_path, monkeypatch):
    from etl.core.config import DEFAULT_PARAMS, default_params, load_section

    monkeypatch.chdir(tmp_path)
    assert default_params() == DEFAULT_PARAMS  # nothing here: the repository's (or the installed copy)
    (tmp_path / "params.yaml").write_text("shards:\n  seed: 7\n", encoding="utf-8")
    assert default_params() == tmp_path / "params.yaml"
    assert load_section(load_params(None), "shards").seed == 7
