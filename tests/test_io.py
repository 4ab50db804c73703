"""Readers and writers: every format, and every kind of bad input the issue lists."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from etl.core.document import Document
from etl.io.records import ReaderConfig, list_input_files, read_inputs, read_parquet_dir, sniff_encoding, write_jsonl, write_parquet


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


def _by_id(docs):
    return {d.id: d for d in docs}


def test_jsonl_fields_and_extra_keys_go_to_meta(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [
        {"id": "r1", "text": "你好世界", "source": "s", "domain": "expert", "lang": "zh", "meta": {"k": 1}},
        {"id": "r2", "turns": [{"role": "A", "text": "hi"}], "domain": "dialogue"},
        {"text": "no id here"},
    ])
    docs = list(read_inputs([f]))
    assert [d.id for d in docs] == ["r1", "r2", "a.jsonl:3"]
    r1, r2, r3 = docs
    assert (r1.text, r1.source, r1.domain, r1.lang, r1.meta["k"]) == ("你好世界", "s", "expert", "zh", 1)
    assert r1.meta["src_file"] == str(f) and r1.meta["src_line"] == 1
    assert r2.meta["turns"] == [{"role": "A", "text": "hi"}] and r2.text == ""
    assert r3.domain == "general" and r3.source == str(f)
    assert not any(d.dropped for d in docs)


def test_invalid_json_no_text_and_wrong_types_are_rejected_with_file_and_line(tmp_path, caplog):
    f = _jsonl(tmp_path / "bad.jsonl", [
        {"id": "ok", "text": "fine"},
        "{not json",
        {"id": "empty", "text": "   "},
        {"id": "num", "text": 42},
        "[1, 2]",
        {"id": "m", "text": "x", "meta": [1]},
    ])
    docs = list(read_inputs([f]))
    reasons = {d.meta["src_line"]: d.drop_reason for d in docs}
    assert reasons == {1: None, 2: "invalid_json", 3: "no_text", 4: "invalid_record", 5: "invalid_record", 6: "invalid_record"}
    bad = [d for d in docs if d.dropped]
    assert all(d.meta["src_file"] == str(f) and d.meta["drop_step"] == "read" for d in bad)
    assert bad[0].text == "{not json"  # the raw record is kept, nothing lost
    assert {d.meta.get("field") for d in bad} == {None, "text", "meta"}
    assert "bad.jsonl: record 2" in caplog.text and "field 'text'" in caplog.text


def test_duplicate_ids_first_occurrence_in_file_order_wins(tmp_path):
    _jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "second file"}])
    _jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "first"}, {"id": "y", "text": "y"}, {"id": "x", "text": "again"}])
    docs = list(read_inputs([tmp_path]))
    kept = [d for d in docs if not d.dropped]
    dups = [d for d in docs if d.drop_reason == "duplicate_id"]
    assert [(d.id, d.text) for d in kept] == [("x", "first"), ("y", "y")]
    assert [d.text for d in dups] == ["again", "second file"]
    assert dups[0].meta["first_seen_at"] == f"{tmp_path / 'a.jsonl'}:1"


def test_empty_file_is_one_rejected_record_and_blank_lines_are_skipped(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    _jsonl(tmp_path / "blank.jsonl", ["", {"id": "a", "text": "t"}, "  "])
    (tmp_path / "empty.txt").write_text("")
    docs = list(read_inputs([tmp_path]))
    assert [(d.id, d.drop_reason) for d in docs] == [("a", None), (f"{tmp_path.name}/empty.jsonl:0", "no_text"),
                                                     (f"{tmp_path.name}/empty.txt:1", "no_text")]


def test_gb18030_file_is_detected_and_decoded(tmp_path):
    text = "中华人民共和国成立于一九四九年。北京是首都，上海是最大的城市。" * 5
    f = tmp_path / "gbk.jsonl"
    f.write_bytes((json.dumps({"id": "g", "text": text}, ensure_ascii=False) + "\n").encode("gb18030"))
    assert sniff_encoding(f.read_bytes()) == "gb18030"
    [doc] = read_inputs([f])
    assert doc.text == text and not doc.dropped


def test_undecodable_line_in_utf8_file_is_rejected_as_invalid_encoding(tmp_path):
    f = tmp_path / "mixed.jsonl"
    good = json.dumps({"id": "a", "text": "好的文本 good " * 20}, ensure_ascii=False).encode()
    f.write_bytes(good * 1 + b"\n" + b'{"id": "b", "text": "\xff\xfe broken"}\n' + good.replace(b'"a"', b'"c"') + b"\n")
    docs = list(read_inputs([f]))
    assert [(d.meta["src_line"], d.drop_reason) for d in docs] == [(1, None), (2, "invalid_encoding"), (3, None)]


def test_fifty_megabyte_single_line_is_rejected_not_loaded(tmp_path):
    f = tmp_path / "huge.jsonl"
    with open(f, "w") as handle:
        handle.write(json.dumps({"id": "small", "text": "ok"}) + "\n")
        handle.write('{"id": "huge", "text": "' + "a" * (50 * 1024 * 1024) + '"}\n')
        handle.write(json.dumps({"id": "after", "text": "ok"}) + "\n")
    docs = list(read_inputs([f]))
    assert [(d.meta["src_line"], d.drop_reason) for d in docs] == [(1, None), (2, "record_too_large"), (3, None)]
    assert len(docs[1].text) > 50 * 1024 * 1024  # kept in rejected/, not lost
    big = ReaderConfig(max_record_bytes=64 * 1024 * 1024)
    assert not list(read_inputs([f], big))[1].dropped


def test_truncated_gzip_keeps_records_before_the_cut(tmp_path):
    rows = "".join(json.dumps({"id": f"r{i}", "text": f"record {i} " * 50}) + "\n" for i in range(400))
    blob = gzip.compress(rows.encode())
    f = tmp_path / "cut.jsonl.gz"
    f.write_bytes(blob[: len(blob) // 2])
    docs = list(read_inputs([f]))
    assert docs[-1].drop_reason == "truncated_file" and "EOFError" in docs[-1].meta["error"]
    kept = [d for d in docs if not d.dropped]
    assert 0 < len(kept) < 400
    assert [d.id for d in kept] == [f"r{i}" for i in range(len(kept))]


def test_gzip_jsonl_round_trip_and_parquet_round_trip(tmp_path):
    docs = [Document(id=f"d{i}", text=f"文本 {i}", domain="expert", lang="zh", meta={"n": i, "nested": {"a": [1, 2]}}) for i in range(5)]
    assert write_jsonl(docs, tmp_path / "out.jsonl.gz") == 5
    back = list(read_inputs([tmp_path / "out.jsonl.gz"]))
    assert [(d.id, d.text, d.domain, d.meta["nested"]) for d in back] == [(d.id, d.text, d.domain, d.meta["nested"]) for d in docs]
    (tmp_path / "pq").mkdir()
    write_parquet(back, tmp_path / "pq" / "part-0.parquet")
    again = list(read_parquet_dir(tmp_path / "pq"))
    assert [(d.id, d.text, d.meta["n"]) for d in again] == [(d.id, d.text, d.meta["n"]) for d in docs]
    # a stage output read back through the generic reader keeps ids and provenance of the first read
    third = list(read_inputs([tmp_path / "pq"]))
    assert [d.id for d in third] == [d.id for d in docs] and not any(d.dropped for d in third)
    assert [(d.meta["src_file"], d.meta["src_line"]) for d in third] == [(str(tmp_path / "out.jsonl.gz"), i + 1) for i in range(5)]


def test_stage_output_directory_is_read_from_kept_only(tmp_path):
    stage = tmp_path / "clean"
    (stage / "kept").mkdir(parents=True)
    (stage / "rejected").mkdir()
    write_parquet([Document(id="k", text="kept")], stage / "kept" / "part-0.parquet")
    write_parquet([Document(id="r", text="rejected").drop("too_short", "quality")], stage / "rejected" / "part-0.parquet", rejected=True)
    (stage / "stats.json").write_text("{}")
    assert [f.name for f in list_input_files([stage])] == ["kept/part-0.parquet"]
    assert [d.id for d in read_inputs([stage])] == ["k"]
    # without stats.json it is a plain directory: both folders are read
    (stage / "stats.json").unlink()
    assert sorted(d.id for d in read_inputs([stage])) == ["k", "r"]


def test_text_files_per_file_and_per_paragraph(tmp_path):
    (tmp_path / "doc.txt").write_text("Title\n\nFirst paragraph\ncontinues.\n\n\nSecond.\n", encoding="utf-8")
    [whole] = read_inputs([tmp_path / "doc.txt"])
    assert whole.id == "doc.txt" and "Second." in whole.text
    paras = list(read_inputs([tmp_path / "doc.txt"], ReaderConfig(text_unit="paragraph")))
    assert [(d.id, d.text) for d in paras] == [("doc.txt:1", "Title"), ("doc.txt:3", "First paragraph\ncontinues."), ("doc.txt:7", "Second.")]


def test_html_files_are_marked_and_crlf_normalised(tmp_path):
    (tmp_path / "p.html").write_bytes(b"<html><body><p>Hello</p></body></html>\r\n")
    [doc] = read_inputs([tmp_path / "p.html"])
    assert doc.meta["format"] == "html" and "<p>Hello</p>" in doc.text


def test_listing_recurses_skips_hidden_and_rejects_unknown_explicit_files(tmp_path):
    (tmp_path / "sub").mkdir()
    _jsonl(tmp_path / "sub" / "a.jsonl", [{"text": "x"}])
    (tmp_path / "sub" / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.jsonl").write_text("{}\n")
    (tmp_path / "notes.csv").write_text("a,b\n")
    files = list_input_files([tmp_path])
    assert [f.name for f in files] == [f"{tmp_path.name}/sub/a.jsonl"]
    assert list_input_files([str(tmp_path / "**" / "*.jsonl")])[0].path.endswith("a.jsonl")
    with pytest.raises(ValueError, match="unknown file type"):
        list_input_files([tmp_path / "notes.csv"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list_input_files([str(tmp_path / "*.parquet")])


def test_reader_config_validation_names_the_field():
    with pytest.raises(ValueError, match="read.text_unit"):
        ReaderConfig(text_unit="sentence")
    with pytest.raises(ValueError, match="read.max_record_bytes"):
        ReaderConfig(max_record_bytes=0)


def test_real_slices_read_without_loss(data_dir):
    docs = list(read_inputs([str(data_dir / "*.jsonl")]))  # licenses/*.txt are not data
    lines = sum(1 for f in data_dir.glob("*.jsonl") for line in open(f, encoding="utf-8") if line.strip())
    assert len(docs) == lines
    assert not [d for d in docs if d.dropped]
    assert sum(1 for d in docs if "turns" in d.meta) == 30
    assert sum(1 for d in docs if d.meta.get("format") == "html") == 7


def test_rows_to_batch_equals_arrow_from_pylist():
    import pyarrow as pa

    from etl.core.document import REJECTED_SCHEMA, rows_to_batch

    rows = [Document("a", "文本", meta={"k": 1}).to_row(), Document("b", "", domain="expert").drop("no_text", "read").to_row(),
            {"id": "c", "text": "missing keys are null"}]
    assert rows_to_batch(rows, REJECTED_SCHEMA).equals(pa.RecordBatch.from_pylist(rows, schema=REJECTED_SCHEMA))
    assert rows_to_batch([], REJECTED_SCHEMA).num_rows == 0


def _ragged_jsonl(path: Path) -> Path:
    """Lines longer than a 200-byte range, CRLF ends, blank lines, an invalid JSON line, a
    repeated id, records without ids, and no newline after the last line."""
    rows = [json.dumps({"id": "a", "text": "short"}), "", json.dumps({"text": "无编号 " + "长" * 300}) + "\r",
            "{not json", "   ", json.dumps({"id": "b", "text": "x" * 450, "meta": {"k": 1}}) + "\r",
            json.dumps({"id": "a", "text": "again"})]
    rows += [json.dumps({"text": f"line {i} " + "y" * (i * 7 % 90)}) for i in range(40)]
    path.write_bytes(("\n".join(rows)).encode("utf-8"))  # no trailing newline
    return path


def _span_read(input_file, config, split_bytes):
    from etl.io.records import FileSpan, byte_ranges, count_span_lines, read_file

    size = Path(input_file.path).stat().st_size
    ranges = byte_ranges(size, split_bytes)
    counts = [count_span_lines(input_file.path, start, end) for start, end in ranges]
    has_records, before, docs = any(c[1] for c in counts), 0, []
    for (start, end), (newlines, _) in zip(ranges, counts):
        docs += list(read_file(input_file, config, FileSpan(start, end, before, has_records)))
        before += newlines
    return docs


@pytest.mark.parametrize("split_bytes", [1, 7, 64, 200, 1000])
def test_byte_ranges_read_the_same_records_as_the_whole_file(tmp_path, split_bytes):
    """Every line is read by exactly one line-aligned range, with the whole-file reader's ids,
    line numbers, text, meta and rejections (invalid_json, no trailing newline, CRLF, blanks)."""
    from etl.io.records import InputFile, read_file

    f = InputFile(str(_ragged_jsonl(tmp_path / "big.jsonl")), "big.jsonl")
    whole = [d.to_row() for d in read_file(f, ReaderConfig())]
    assert [r["drop_reason"] for r in whole].count("invalid_json") == 1 and len(whole) == 45
    assert [d.to_row() for d in _span_read(f, ReaderConfig(), split_bytes)] == whole


def test_a_blank_or_unreadable_file_is_reported_once_by_its_first_range(tmp_path):
    from etl.io.records import InputFile

    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n\r\n" * 50)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"text": "a"}\n\x00\x01' * 40)
    for path in (blank, binary):
        docs = _span_read(InputFile(str(path), path.name), ReaderConfig(), 16)
        assert [d.drop_reason for d in docs] == ["no_text" if path is blank else "unreadable_file"]
    with pytest.raises(ValueError, match="read.split_bytes"):
        ReaderConfig(split_bytes=0)
