"""Kafka ingest against the embedded broker: exactly-once landing across a SIGKILL, dead
letters, and two consumers of one group splitting the partitions."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from etl.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parent.parent
SESSION_MS = "6000"  # joins take half of this on the embedded broker

MALFORMED = [b"{oops", b"\xff\xfe\x00 not utf-8", b'{"id": "no-text", "text": ""}', b"[1, 2, 3]", b'{"id": "num", "text": 7}']
MALFORMED_REASONS = {"invalid_json", "invalid_encoding", "no_text", "invalid_record"}


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        yield b


def _records(data_dir: Path, n: int) -> list[dict]:
    rows = []
    for name in ("general_en.jsonl", "general_zh.jsonl", "expert.jsonl"):
        for line in open(data_dir / name, encoding="utf-8"):
            rec = json.loads(line)
            rows.append({"id": rec["id"], "text": rec["text"], "domain": rec["domain"], "source": rec["source"]})
    return rows[:n]


def _produce(broker: EmbeddedBroker, topic: str, values: list[bytes], partitions: int = 2) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    for i, value in enumerate(values):
        producer.send(topic, value, key=str(i).encode(), partition=i % partitions)
    producer.flush()
    producer.close()


def _ingest(broker, topic, out, *extra, group="g") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "etl.ingest", "--bootstrap-servers", broker.bootstrap_servers, "--topic", topic,
           "--output", str(out), "--group-id", group, "--session-timeout-ms", SESSION_MS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _events(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def _landed_ids(out: Path) -> list[str]:
    ids = []
    for sub in ("kept", "rejected"):
        for part in sorted((out / sub).glob("*.parquet")):
            ids += pq.read_table(part, columns=["id"]).column("id").to_pylist()
    return ids


def _dead_letters(out: Path) -> list[dict]:
    rows = []
    for part in sorted((out / "dead-letter").glob("*.jsonl")):
        rows += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines()]
    return rows


def test_sigkill_mid_stream_then_restart_lands_every_record_exactly_once(broker, data_dir, tmp_path):
    topic = "docs-crash"
    broker.create_topic(topic, partitions=2)
    records = _records(data_dir, 240)
    values = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    for k, bad in enumerate(MALFORMED):  # spread malformed messages through the stream
        values.insert(17 + 41 * k, bad)
    _produce(broker, topic, values)
    out = tmp_path / "landing"

    first = _ingest(broker, topic, out, "--window-records", "10")
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = first.stdout.readline()
        lines.append(line)
        if sum(e.get("event") == "landed" for e in _events(lines)) >= 3:
            break
    first.send_signal(signal.SIGKILL)  # mid-stream: no chance to land or commit the rest
    first.wait(timeout=30)
    landed_before = sum(e.get("event") == "landed" for e in _events(lines))
    assert landed_before >= 3, "the first consumer never landed a window"
    assert len(set(_landed_ids(out))) < len(records), "the kill came too late to test a restart"

    second = _ingest(broker, topic, out, "--window-records", "10", "--once", "--idle-exit-s", "4", "--workers", "2")
    stdout, _ = second.communicate(timeout=180)
    assert second.returncode == 0
    done = [e for e in _events(stdout.splitlines()) if e.get("event") == "done"]
    assert done, stdout[-2000:]

    ids = _landed_ids(out)
    assert sorted(ids) == sorted(r["id"] for r in records)  # every valid record, exactly once
    dead = _dead_letters(out)
    assert len(dead) == len(MALFORMED)
    assert {d["reason"] for d in dead} == MALFORMED_REASONS
    assert sorted((d["partition"], d["offset"]) for d in dead) == sorted(
        (i % 2, i // 2) for i, v in enumerate(values) if v in MALFORMED)


def test_two_consumers_in_one_group_split_the_partitions(broker, data_dir, tmp_path):
    topic = "docs-split"
    broker.create_topic(topic, partitions=2)
    records = _records(data_dir, 120)
    _produce(broker, topic, [json.dumps(r, ensure_ascii=False).encode() for r in records])
    out = tmp_path / "landing"
    procs = [_ingest(broker, topic, out, "--window-records", "15", "--once", "--idle-exit-s", "8", group="split")
             for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    finals = []
    for text in outputs:
        assigned = [e["partitions"] for e in _events(text.splitlines()) if e.get("event") == "assigned"]
        assert assigned, text[-2000:]
        finals.append(set(assigned[-1]))
    assert finals[0] | finals[1] == {0, 1} and not finals[0] & finals[1]
    assert all(len(f) == 1 for f in finals)
    assert sorted(_landed_ids(out)) == sorted(r["id"] for r in records)
    landed_by = [{e["partition"] for e in _events(t.splitlines()) if e.get("event") == "landed"} for t in outputs]
    assert landed_by[0] and landed_by[1] and not landed_by[0] & landed_by[1]


def test_part_names_are_keyed_by_partition_and_offsets(tmp_path):
    from etl.kafka.ingest import PART_RE, part_name, remove_uncommitted_parts

    stem = part_name(3, 120, 239)
    assert stem == "p00003-o000000000120-000000000239"
    assert PART_RE.match(stem + ".parquet")["first"] == "000000000120"
    for sub in ("kept", "rejected", "dead-letter", "stats"):
        (tmp_path / sub).mkdir()
    for first, last in ((0, 9), (10, 19), (20, 29)):
        (tmp_path / "kept" / f"{part_name(3, first, last)}.parquet").write_text("x")
        (tmp_path / "kept" / f"{part_name(4, first, last)}.parquet").write_text("x")
    assert remove_uncommitted_parts(tmp_path, 3, committed=10) == 2
    left = sorted(p.stem for p in (tmp_path / "kept").iterdir())
    assert left == [part_name(3, 0, 9)] + [part_name(4, f, f + 9) for f in (0, 10, 20)]


def test_windows_are_deduplicated_against_the_index_and_extend_it(broker, data_dir, tmp_path):
    import pyarrow.parquet as pq

    from etl.dedup.cluster import load_dedup_config, load_index

    topic = "docs-dedup"
    broker.create_topic(topic, partitions=1)
    records = _records(data_dir, 40)
    copies = [dict(r, id=f"{r['id']}-copy") for r in records[:5]]  # same texts, new ids, in later windows
    _produce(broker, topic, [json.dumps(r, ensure_ascii=False).encode() for r in records + copies], partitions=1)
    index_dir, out = tmp_path / "index", tmp_path / "landing"
    proc = _ingest(broker, topic, out, "--window-records", "10", "--once", "--idle-exit-s", "4",
                   "--dedup-index", str(index_dir), "--update-index", group="dedup")
    proc.communicate(timeout=180)
    assert proc.returncode == 0
    rejected = {}
    for part in (out / "rejected").glob("*.parquet"):
        table = pq.read_table(part, columns=["id", "drop_reason"]).to_pylist()
        rejected.update({row["id"]: row["drop_reason"] for row in table})
    assert {k: v for k, v in rejected.items() if k.endswith("-copy")} == {c["id"]: "exact_duplicate" for c in copies}
    index = load_index(index_dir, load_dedup_config(None))
    kept_ids = set(_landed_ids(out)) - set(rejected)
    assert set(index.ids) == kept_ids and not any(i.endswith("-copy") for i in index.ids)


def test_the_first_window_lands_without_loading_anything(tmp_path):
    """Everything a landing needs is loaded by the warm-up, before the first record: with two
    forked workers (as the ingest runs), the first window's stats built another pipeline in the
    main process (reading params.yaml again), and pyarrow's first conversion imported its pandas
    glue, inside the first window (its main-process CPU 0.08-0.10 s against 0.03 s for later
    windows). Run in a fresh process, where nothing is loaded yet."""
    script = """
import json, sys, time
from pathlib import Path
from etl.clean.pipeline import warm_up_documents
from etl.kafka.ingest import Window, WindowWriter, default_factory
from etl.io.records import ReaderConfig

class Message:
    def __init__(self, offset, value):
        self.partition, self.offset, self.key, self.value = 0, offset, None, value

calls = []
factory = default_factory(None)
def counting_factory():
    calls.append(1)  # counted in this process only: the workers' calls happen in their own
    return factory()

writer = WindowWriter(Path(sys.argv[1]), "t", counting_factory, ReaderConfig(), workers=2, warm_up=warm_up_documents())
built = len(calls)
texts = [doc.text for doc in warm_up_documents()]
values = [json.dumps({"id": f"m{i}", "text": t}).encode() for i, t in enumerate(texts)] + [b"{"]
window = Window(0, time.monotonic(), [Message(i, v) for i, v in enumerate(values)])
before = set(sys.modules)
stats = writer.land(window)
writer.pipeline.close()
print(json.dumps({"new": sorted(set(sys.modules) - before), "built_before": built, "built_after": len(calls),
                  "in": stats.num_in, "kept": stats.num_kept}))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["in"] == 3 and result["kept"] >= 1
    assert result["built_before"] == 1 and result["built_after"] == 1, "the first window built another pipeline"
    assert result["new"] == [], f"the first landing imported {result['new']}"
    assert len(list((tmp_path / "out" / "kept").glob("*.parquet"))) == 1
    assert len((tmp_path / "out" / "dead-letter" / "p00000-o000000000000-000000000002.jsonl").read_text().splitlines()) == 1
