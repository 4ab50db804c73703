"""Reading raw inputs into `Document` records, and writing records as Parquet or JSON Lines.

Accepted inputs (a path, a directory searched recursively, or a glob; several may be given):

========================  ==================================================================
``*.jsonl`` ``*.json``    one JSON object per line; ``.gz`` accepted.  Fields ``id``, ``text``,
``*.ndjson``              ``source``, ``domain``, ``lang``, ``meta``; other top-level fields
                          (``turns``, ``instruction``, ``input``, ``output``...) go into ``meta``.
``*.parquet``             the same columns (``meta`` as JSON string, map or struct).
``*.txt`` ``*.md``        one document per file, or per blank-line paragraph (``text_unit``).
``*.html`` ``*.htm``      one document per file, ``meta.format = "html"``.
========================  ==================================================================

Bad records never stop the reader: they come out as documents already marked dropped
(``invalid_json``, ``invalid_record``, ``no_text``, ``invalid_encoding``,
``record_too_large``, ``truncated_file``, ``unreadable_file``) with ``src_file`` and
``src_line`` in ``meta`` so they land in ``rejected/``.  Whatever a line holds -- nesting
deeper than ``read.max_nesting_depth``, numbers too long to convert, lone surrogates, NUL
bytes -- it becomes one rejected record, never an exception that stops the job; a binary
file (or an empty or invalid ``.gz``) becomes one ``unreadable_file`` record.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import logging
import os
import posixpath
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl.core.atomic import atomic_file, split_labelled_input
from etl.core.config import FrozenDict
from etl.core.document import DOC_COLUMNS, DOC_SCHEMA, REJECTED_SCHEMA, Document, documents_to_table, dumps_meta
from etl.core.errors import InputError
from etl.io.fs import file_size, local_file, open_input

logger = logging.getLogger(__name__)

READ_STEP = "read"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
PARQUET_SUFFIXES = (".parquet",)
ALL_SUFFIXES = JSONL_SUFFIXES + TEXT_SUFFIXES + HTML_SUFFIXES + PARQUET_SUFFIXES
#: Keys of a JSON record that must hold text-like content for the record to be usable
#: (``messages``: OpenAI / Hugging Face chat; ``conversations``: ShareGPT; see etl/io/dialogue.py).
CONTENT_KEYS = ("text", "turns", "messages", "conversations", "instruction")
_SNIFF_BYTES = 1 << 16
#: Document fields ``read.fields`` may map to a path in the raw record.
MAPPABLE_FIELDS = ("id", "text", "source", "domain", "lang")
#: Where the guide's knowledge records keep their fields (used when a record lacks the field itself).
KNOWLEDGE_LAYOUT = {"id": ("knowledge_id",), "source": ("metadata", "source"), "domain": ("metadata", "domain"),
                    "lang": ("metadata", "lang")}
_MISSING = object()


@dataclass(frozen=True, kw_only=True)
class ReaderConfig:
    """How raw files become documents (the ``read:`` section of params.yaml)."""

    text_unit: str = "file"
    """``file``: one document per text file; ``paragraph``: one per blank-line-separated block."""
    default_domain: str = "general"
    """Domain given to records that have none (for example all records of one input folder)."""
    max_record_bytes: int = 16 * 1024 * 1024
    """Records larger than this (bytes of the raw line or file) are rejected as
    ``record_too_large`` rather than loaded into an executor's memory. 16 MiB fits any
    paragraph-level training document; raise it for whole books."""
    encoding: str = "auto"
    """``auto`` sniffs each file (UTF-8, else charset-normalizer's guess, GBK read as GB18030);
    or a fixed codec name."""
    max_nesting_depth: int = 64
    """Records whose JSON nests deeper than this (objects and arrays; a flat record is 1) are
    rejected as ``invalid_record`` naming the depth: no training record needs more, and deeper
    values would exhaust the recursion of JSON writers further down the pipeline."""
    fields: Mapping[str, str] = field(default_factory=lambda: FrozenDict())
    """Where the document fields are in raw records: a dotted path per field (``id``, ``text``,
    ``source``, ``domain``, ``lang``), e.g. ``{id: knowledge_id, domain: metadata.domain}``. A
    mapped field that a record lacks (or holds empty) rejects it as ``missing_field``, never a
    silent default. Unmapped fields are read under their own names and, failing that, in the
    guide's knowledge-record layout (``knowledge_id``; ``metadata.source``/``domain``/``lang``).
    Stage outputs read back are never remapped."""
    split_bytes: int = 128 * 1024 * 1024
    """Bytes of one read task's range of a large uncompressed JSON Lines file (Spark): such a
    file is read by ``ceil(size / split_bytes)`` tasks over line-aligned byte ranges, as
    Hadoop's ``LineRecordReader`` splits text. 128 MiB, Spark's
    ``spark.sql.files.maxPartitionBytes``. Compressed files are read by one task. Records,
    ids and line numbers do not change with it."""

    def __post_init__(self) -> None:
        if self.text_unit not in ("file", "paragraph"):
            raise ValueError(f"read.text_unit must be 'file' or 'paragraph', got {self.text_unit!r}")
        if self.max_record_bytes <= 0:
            raise ValueError(f"read.max_record_bytes must be positive, got {self.max_record_bytes}")
        if self.split_bytes < 1:
            raise ValueError(f"read.split_bytes must be positive, got {self.split_bytes}")
        if not self.default_domain:
            raise ValueError("read.default_domain must be a non-empty string")
        if not 2 <= self.max_nesting_depth <= 500:
            raise ValueError(f"read.max_nesting_depth must be between 2 and 500, got {self.max_nesting_depth}")
        unknown = sorted(set(self.fields) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"read.fields: unknown field(s) {unknown}; mappable: {list(MAPPABLE_FIELDS)}")
        bad = {k: v for k, v in self.fields.items() if not isinstance(v, str) or not v.strip() or v.startswith(".") or v.endswith(".")}
        if bad:
            raise ValueError(f"read.fields: each value must be a dotted path like 'metadata.domain', got {bad}")
        object.__setattr__(self, "fields", FrozenDict(self.fields))


@dataclass(frozen=True)
class InputFile:
    """One file to read, the name records from it are known by (ids, provenance), and the
    domain its records get when they carry none (``--input DOMAIN=PATH``; None: ``read.default_domain``)."""

    path: str
    name: str
    domain: str | None = None
    location: str = ""
    """Where readers open the file, when not ``path``: an absolute ``file://`` URI or a remote
    one, set by the Spark driver so that executors never depend on its working directory.
    ``path`` stays as the user gave it: the records' provenance (``meta.src_file``) does not
    change with where the job runs."""

    @property
    def where(self) -> str:
        """The location readers open (:attr:`location`, else :attr:`path`)."""
        return self.location or self.path


@dataclass(frozen=True)
class FileSpan:
    """A line-aligned byte range ``[start, end)`` of a splittable file, read by one task.

    The range holds the lines that *begin* inside it (Hadoop's ``LineRecordReader`` rule): it
    skips a partial first line unless ``start`` is 0 or follows a newline, and reads the line
    that straddles ``end`` to its end, so each line is read by exactly one range.
    ``newlines_before`` (the count of ``\\n`` bytes in ``[0, start)``, from
    :func:`count_span_lines` over the earlier ranges) numbers the lines as the whole-file
    reader does; ``file_has_records`` tells the first range whether the whole file is blank."""

    start: int
    end: int
    newlines_before: int = 0
    file_has_records: bool = True


def splittable(input_file: InputFile) -> bool:
    """True for a file read as byte ranges when large: uncompressed JSON Lines."""
    return file_format(input_file.path) == "jsonl" and not input_file.path.lower().endswith(".gz")


def byte_ranges(size: int, split_bytes: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``split_bytes`` (the last one shorter) covering ``size`` bytes."""
    return [(start, min(start + split_bytes, size)) for start in range(0, size, split_bytes)] or [(0, 0)]


_BLANK_BYTES = b" \t\n\r\x0b\x0c"  # what bytes.strip() removes: a line of only these is blank


def count_span_lines(location: str, start: int, end: int, chunk_bytes: int = 16 << 20) -> tuple[int, bool]:
    """``(newlines, has_content)`` of the bytes ``[start, end)`` of the file at ``location``:
    the ``\\n`` count (to number the next ranges' lines) and whether any byte is not blank."""
    newlines, content = 0, False
    with open_input(location) as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            chunk = handle.read(min(chunk_bytes, left))
            if not chunk:
                break
            left -= len(chunk)
            newlines += chunk.count(b"\n")
            content = content or bool(chunk.translate(None, _BLANK_BYTES))
    return newlines, content



def list_input_files(paths: Iterable[str | os.PathLike]) -> list[InputFile]:
    """Expand paths, directories (recursively) and globs into a sorted, de-duplicated file list.

    Files named explicitly must have a known suffix; inside directories unknown files and
    hidden or ``_``-prefixed files (Spark's ``_SUCCESS``, ``.crc``) are skipped.  A stage
    output directory (it has ``stats.json`` and ``kept/``) is read from its ``kept/`` only,
    so ``--input runs/clean`` feeds the next stage the kept documents, not the rejected ones.
    ``DOMAIN=PATH`` gives the records of PATH that carry no domain the domain DOMAIN.
    """
    found: dict[str, InputFile] = {}
    for raw in paths:
        domain, raw = split_labelled_input(os.fspath(raw))
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches:
            raise FileNotFoundError(f"input {raw!r} matches no file")
        for match in matches:
            p = stage_kept_dir(Path(match))
            if p.is_dir():
                for child in sorted(p.rglob("*")):
                    rel = child.relative_to(p)
                    if child.is_file() and is_data_file(rel):
                        found.setdefault(str(child), InputFile(str(child), f"{p.name}/{rel.as_posix()}", domain))
            elif p.is_file():
                if file_format(p) is None:
                    raise ValueError(f"input {match!r}: unknown file type (expected one of {', '.join(ALL_SUFFIXES)} or .gz)")
                found.setdefault(str(p), InputFile(str(p), p.name, domain))
            else:
                raise FileNotFoundError(f"input {match!r} does not exist")
    return sorted(found.values(), key=lambda f: f.path)


def is_stage_output(path: str | os.PathLike) -> bool:
    """True for a stage's output directory: it holds ``stats.json`` and a ``kept/`` folder."""
    p = Path(path)
    return p.is_dir() and (p / "stats.json").is_file() and (p / "kept").is_dir()


def stage_kept_dir(path: Path) -> Path:
    """``path/kept`` when ``path`` is a stage output directory, else ``path``."""
    return path / "kept" if is_stage_output(path) else path


def is_data_file(rel: Path) -> bool:
    """True for a file inside an input directory that is read: a known suffix, no hidden or
    ``_``-prefixed part (Spark's ``_SUCCESS``, ``.crc`` files)."""
    if any(part.startswith((".", "_")) for part in rel.parts):
        return False
    return file_format(rel) is not None


def file_format(path: str | os.PathLike) -> str | None:
    """``jsonl``, ``parquet``, ``text`` or ``html`` from the suffix (``.gz`` looked through)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("text", TEXT_SUFFIXES), ("html", HTML_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    return None


def read_inputs(paths: Iterable[str | os.PathLike], config: ReaderConfig | None = None) -> Iterator[Document]:
    """Read every input file in order, then mark repeated ids as ``duplicate_id``.

    The first occurrence (in sorted file order, then line order) of an id is kept.  Inputs
    that yield nothing but ``unreadable_file`` records (or nothing at all) raise
    :class:`NothingRead` once they are exhausted: a job never succeeds having read nothing.
    """
    config = config or ReaderConfig()
    paths = [os.fspath(p) for p in paths]
    seen: dict[str, str] = {}
    read_any = False
    for input_file in list_input_files(paths):
        unreadable = False
        for doc in read_file(input_file, config):
            unreadable = doc.drop_reason == UNREADABLE
            yield mark_duplicate_id(doc, seen)
        read_any = read_any or not unreadable  # an unreadable file yields one record, nothing else
    if not read_any:
        raise NothingRead(nothing_read_message(paths))


#: The reason of a record that stands for a whole file that could not be read.
UNREADABLE = "unreadable_file"


class NothingRead(InputError):
    """Every input file was unreadable, or the inputs held no file."""


def nothing_read_message(paths: Iterable[str]) -> str:
    """The one-line error of a job whose inputs yielded no readable file."""
    return (f"read nothing from the inputs {list(paths)}: every file is unreadable ({UNREADABLE}) or none was found; "
            "check the paths (relative ones are resolved against the directory the job was started from) and the files")


def mark_duplicate_id(doc: Document, seen: dict[str, str]) -> Document:
    """Drop ``doc`` as ``duplicate_id`` if its id was seen before; else remember it."""
    where = f"{doc.meta.get('src_file')}:{doc.meta.get('src_line')}"
    if doc.dropped:  # a rejected record (bad JSON, no text...) does not claim its id
        return doc
    first = seen.get(doc.id)
    if first is None:
        seen[doc.id] = where
    else:
        doc.drop("duplicate_id", READ_STEP, duplicate_of=doc.id, first_seen_at=first)
        logger.warning("%s: record %s: field 'id': duplicate id %r (first at %s)", doc.meta.get("src_file"), doc.meta.get("src_line"), doc.id, first)
    return doc


def read_file(input_file: InputFile | str, config: ReaderConfig | None = None, span: FileSpan | None = None) -> Iterator[Document]:
    """Read one file of any supported format into documents (bad records marked dropped).

    ``span``: only the lines beginning in this byte range of a :func:`splittable` file, with
    the records, ids and line numbers the whole-file read gives them; whole-file records
    (``unreadable_file``, ``no_text`` for a blank file) come from the range at offset 0 only."""
    config = config or ReaderConfig()
    if isinstance(input_file, str):
        input_file = InputFile(input_file, Path(input_file).name)
    fmt = file_format(input_file.path)
    if fmt is None:
        raise ValueError(f"{input_file.path}: unknown file type")
    if span is not None and not splittable(input_file):
        raise ValueError(f"{input_file.path}: only uncompressed JSON Lines files are read by byte range")
    try:
        if span is not None:
            yield from _read_jsonl(input_file, config, span)
        else:
            readers = {"jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text, "html": _read_html}
            yield from readers[fmt](input_file, config)
    except OSError as exc:  # unreadable file: one rejected record names it
        if span is None or span.start == 0:
            yield bad_record(input_file, 0, "unreadable_file", f"{type(exc).__name__}: {exc}", "")


# --------------------------------------------------------------------------------- helpers


def bad_record(input_file: InputFile, line: int, reason: str, error: str, raw: str, field: str | None = None,
               doc_id: str | None = None) -> Document:
    """A rejected record for raw input that could not become a document (logged with file, record, field).

    ``raw`` (the line, or the record's columns as JSON) is its text, so nothing is lost;
    ``doc_id`` is the record's own id when it has one, else ``<file>:<record>``."""
    where = f"{input_file.path}: record {line}" + (f": field {field!r}" if field else "")
    logger.warning("%s: %s (%s)", where, reason, error)
    meta = {"src_file": input_file.path, "src_line": line, "error": error}
    if field:
        meta["field"] = field
    doc = Document(id=doc_id or f"{input_file.name}:{line}", text=raw, source=input_file.path, meta=meta)
    return doc.drop(reason, READ_STEP)


@contextlib.contextmanager
def _open_binary(input_file: InputFile) -> Iterator[Any]:
    """The file's bytes (decompressed for ``.gz``), opened at its location (:mod:`etl.io.fs`)."""
    with open_input(input_file.where) as handle:
        if input_file.path.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=handle, mode="rb") as inner:
                yield inner
        else:
            yield handle


def sniff_encoding(sample: bytes) -> str:
    """UTF-8 when the sample decodes as UTF-8, else charset-normalizer's best guess.

    GBK/GB2312 guesses are widened to GB18030 (a superset); no guess falls back to UTF-8.
    """
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3:  # a multi-byte char cut by the sample's end
            return "utf-8"
    # Mostly UTF-8 with a few corrupt bytes: stay UTF-8 and reject the bad lines one by one.
    decoded = sample.decode("utf-8", "replace")
    bad = decoded.count("\ufffd")
    valid_multibyte = sum(1 for ch in decoded if ord(ch) > 0x7F) - bad
    if valid_multibyte > 0 and bad <= 0.05 * (valid_multibyte + bad):
        return "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None:
        return "utf-8"
    enc = best.encoding.lower().replace("-", "_")
    if enc in ("gbk", "gb2312", "cp936", "hz", "gb18030"):
        return "gb18030"
    return best.encoding


def _file_encoding(input_file: InputFile, config: ReaderConfig) -> str:
    if config.encoding != "auto":
        return config.encoding
    try:
        with _open_binary(input_file) as handle:
            return sniff_encoding(handle.read(_SNIFF_BYTES))
    except (EOFError, OSError, zlib.error):
        return "utf-8"


def _iter_lines(input_file: InputFile) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Yield ``(line_no, raw_bytes, None)``; on a truncated/corrupt stream ``(n, None, error)``."""
    line_no = 0
    try:
        with _open_binary(input_file) as handle:
            for line_no, raw in enumerate(handle, start=1):
                yield line_no, raw, None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield line_no + 1, None, f"{type(exc).__name__}: {exc}"


def _iter_span_lines(input_file: InputFile, span: FileSpan) -> Iterator[tuple[int, bytes | None, str | None]]:
    """``(line_no, raw_bytes, None)`` for the lines that begin in ``span`` (see :class:`FileSpan`)."""
    with open_input(input_file.where) as handle:
        line_no = span.newlines_before
        position = span.start
        if span.start > 0:
            handle.seek(span.start - 1)
            if handle.read(1) != b"\n":  # inside a line: it belongs to the range it began in
                while True:
                    piece = handle.readline(1 << 20)
                    position += len(piece)
                    if not piece:
                        return
                    if piece.endswith(b"\n"):
                        line_no += 1
                        break
        while position < span.end:
            raw = handle.readline()
            if not raw:
                return
            line_no += 1
            position += len(raw)
            yield line_no, raw, None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range (no JSON writer can store it back)")
    return value


_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def nesting_depth(obj: Any, limit: int) -> int:
    """How deep objects and arrays nest in ``obj`` (a scalar is 0, ``{"a": 1}`` is 1), counted
    without recursion and only until it exceeds ``limit``."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if level > depth:
            depth = level
            if depth > limit:
                return depth
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return depth


def _text_depth(text: str) -> int:
    """Nesting depth of JSON text from its brackets outside strings (for text too deep to parse)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json_record(text: str, max_depth: int = 64) -> tuple[Any, str | None, str | None]:
    """Parse one JSON record: ``(obj, None, None)``, or ``(None, reason, error)`` with reason
    ``invalid_json`` (not JSON, NaN/Infinity, a number out of float range or too long to convert) or
    ``invalid_record`` (nested deeper than ``max_depth``, a lone surrogate that is not valid
    Unicode). Never raises: whatever the text holds becomes a reason."""
    try:
        obj = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        return None, "invalid_json", f"{exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "invalid_record", (f"nested {_text_depth(text)} levels deep, more than read.max_nesting_depth={max_depth} "
                                        "(and than the JSON parser's recursion limit)")
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion", NaN
        return None, "invalid_json", " ".join(str(exc).split())
    if text.count("{") + text.count("[") > max_depth:  # only then can it nest deeper than the limit
        depth = nesting_depth(obj, max_depth)
        if depth > max_depth:
            return None, "invalid_record", f"nested {_text_depth(text)} levels deep, more than read.max_nesting_depth={max_depth}"
    if "\\ud" in text or "\\uD" in text:  # escaped surrogates: a pair is fine, a lone one is not Unicode
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return None, "invalid_record", f"lone surrogate {exc.object[exc.start:exc.end]!a} is not valid Unicode"
    return obj, None, None


def _decode(raw: bytes, encoding: str) -> str:
    text = raw.decode(encoding)
    return text.rstrip("\r\n")


# --------------------------------------------------------------------------------- formats


_TEXT_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def binary_content(sample: bytes) -> str | None:
    """Why ``sample`` (a file's first bytes) is not text, or None: a NUL byte, which no text
    in an 8-bit or UTF-8 encoding holds (UTF-16/32 files with a byte-order mark excepted)."""
    if sample.startswith(_TEXT_BOMS):
        return None
    at = sample.find(b"\x00")
    return None if at < 0 else f"binary content (a NUL byte at offset {at}): not a text file"


def _unreadable(input_file: InputFile) -> str | None:
    """Why a line-oriented file cannot be read at all (an empty or invalid .gz, binary data), or None."""
    if input_file.path.lower().endswith(".gz") and file_size(input_file.where) == 0:
        return "empty .gz file (0 bytes): not gzip data"
    try:
        with _open_binary(input_file) as handle:
            sample = handle.read(_SNIFF_BYTES)
    except gzip.BadGzipFile as exc:
        return f"not a gzip file: {exc}"
    except (EOFError, zlib.error):
        return None  # a cut-off stream: the line reader keeps what comes before the cut (truncated_file)
    return binary_content(sample)


def _read_jsonl(input_file: InputFile, config: ReaderConfig, span: FileSpan | None = None) -> Iterator[Document]:
    first = span is None or span.start == 0  # the range that speaks for the whole file
    problem = _unreadable(input_file)
    if problem is not None:
        if first:
            yield bad_record(input_file, 0, "unreadable_file", problem, "")
        return
    encoding = _file_encoding(input_file, config)
    records = 0 if span is None or not span.file_has_records else 1
    lines = _iter_lines(input_file) if span is None else _iter_span_lines(input_file, span)
    for line_no, raw, error in lines:
        if error is not None:
            yield bad_record(input_file, line_no, "truncated_file", error, "")
            return
        if not raw.strip():
            continue
        records += 1
        if len(raw) > config.max_record_bytes:
            yield bad_record(input_file, line_no, "record_too_large", f"{len(raw)} bytes > read.max_record_bytes={config.max_record_bytes}", raw.decode("utf-8", "replace"))
            continue
        try:
            line = _decode(raw, encoding)
        except UnicodeDecodeError as exc:
            yield bad_record(input_file, line_no, "invalid_encoding", f"not {encoding}: {exc}", raw.decode("utf-8", "replace"))
            continue
        obj, reason, error = parse_json_record(line, config.max_nesting_depth)
        if reason is not None:
            yield bad_record(input_file, line_no, reason, error, line)
            continue
        yield record_to_document(obj, input_file, line_no, config, raw=line)
    if records == 0 and first:  # an empty file is reported, not silently read as nothing
        yield bad_record(input_file, 0, "no_text", "the file holds no records (it is empty or blank)", "")


def record_to_document(obj: Any, input_file: InputFile, line_no: int, config: ReaderConfig, raw: str = "",
                       keep_provenance: bool = False) -> Document:
    """Validate one parsed record and turn it into a document (or a rejected one).

    ``keep_provenance``: a record that already names its origin (``meta.src_file`` and
    ``meta.src_line``, as every stage output does) keeps it, so documents read back from a
    stage's Parquet still point at the raw file and line they came from.
    """
    if not isinstance(obj, dict):
        return bad_record(input_file, line_no, "invalid_record", f"expected a JSON object, got {type(obj).__name__}", raw)

    def reject(reason: str, error: str, field: str | None = None) -> Document:
        # the record's own id and all its columns stay with it in rejected/
        own_id = obj.get("id")
        return bad_record(input_file, line_no, reason, error, raw or _dump_columns(obj), field=field,
                          doc_id=str(own_id) if own_id not in (None, "") and not isinstance(own_id, (dict, list)) else None)

    if not raw:  # records from Parquet or Kafka: parsed already, their nesting not checked yet
        depth = nesting_depth(obj, config.max_nesting_depth)
        if depth > config.max_nesting_depth:
            return reject("invalid_record", f"nested more than read.max_nesting_depth={config.max_nesting_depth} levels deep")
    if not _is_stage_record(obj):
        values, missing = _mapped_fields(obj, config.fields)
        if missing:
            return reject("missing_field", f"read.fields.{missing} = {config.fields[missing]!r}: the record has no such field "
                                           "(or it is empty)", field=config.fields[missing])
        obj = {**obj, **values} if values else obj
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        return reject("invalid_record", f"'text' must be a string, got {type(text).__name__}", field="text")
    if not (text and text.strip()) and not any(obj.get(k) for k in CONTENT_KEYS[1:]):
        return reject("no_text", "record has no text, turns, messages, conversations or instruction", field="text")
    meta = obj.get("meta") or {}
    if isinstance(meta, str):
        parsed, reason, error = parse_json_record(meta, config.max_nesting_depth - 1) if meta.strip() else ({}, None, None)
        if reason == "invalid_record":
            return reject(reason, f"'meta': {error}", field="meta")
        meta = parsed if reason is None else {"meta_raw": meta}
    if not isinstance(meta, dict):
        return reject("invalid_record", f"'meta' must be an object, got {type(meta).__name__}", field="meta")
    meta = dict(meta)
    for key, value in obj.items():
        if key not in DOC_COLUMNS:
            meta.setdefault(key, value)
    if not (keep_provenance and "src_file" in meta and "src_line" in meta):
        meta["src_file"] = input_file.path
        meta["src_line"] = line_no
    doc_id = obj.get("id")
    doc_id = f"{input_file.name}:{line_no}" if doc_id in (None, "") else str(doc_id)
    return Document(
        id=doc_id,
        text=text or "",
        source=str(obj.get("source") or input_file.path),
        domain=str(obj.get("domain") or input_file.domain or config.default_domain),
        lang=str(obj.get("lang") or ""),
        meta=meta,
    )


def _lookup(obj: Any, path: tuple[str, ...] | list[str]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _is_stage_record(obj: dict[str, Any]) -> bool:
    """A record a jinglian stage wrote (all document columns, provenance in meta): never remapped."""
    if not all(k in obj for k in DOC_COLUMNS):
        return False
    meta = obj.get("meta")
    return (isinstance(meta, dict) and "src_file" in meta) or (isinstance(meta, str) and '"src_file"' in meta)


def _mapped_fields(obj: dict[str, Any], mapping: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """Document field values found through ``read.fields`` and the knowledge layout, and the
    first mapped field the record lacks (or None)."""
    values: dict[str, Any] = {}
    for name, path in mapping.items():
        value = _lookup(obj, path.split("."))
        if value is _MISSING or value is None or value == "":
            return values, name
        values[name] = value if name == "text" or isinstance(value, (dict, list)) else str(value)
    for name, path in KNOWLEDGE_LAYOUT.items():
        if name not in mapping and obj.get(name) in (None, ""):
            value = _lookup(obj, path)
            if value is not _MISSING and value not in (None, "") and not isinstance(value, (dict, list)):
                values[name] = str(value)
    return values, None


def _dump_columns(obj: dict[str, Any]) -> str:
    """A record's columns as one JSON line (the text of its rejected record)."""
    try:
        return json.dumps(obj, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        return repr(obj)[:100_000]


def _read_parquet(input_file: InputFile, config: ReaderConfig) -> Iterator[Document]:
    try:
        parquet = pq.ParquetFile(local_file(input_file.where) or open_input(input_file.where))
    except (pa.ArrowInvalid, OSError) as exc:
        yield bad_record(input_file, 0, "unreadable_file", f"{type(exc).__name__}: {exc}", "")
        return
    row_no = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            meta = row.get("meta")
            if isinstance(meta, list):  # a Parquet map arrives as key/value pairs
                row["meta"] = dict(meta)
            yield record_to_document(row, input_file, row_no, config, keep_provenance=True)


def _read_whole(input_file: InputFile, config: ReaderConfig) -> tuple[str | None, Document | None]:
    size = file_size(input_file.where)
    gz = input_file.path.lower().endswith(".gz")
    if size > config.max_record_bytes and not gz:
        return None, bad_record(input_file, 1, "record_too_large", f"{size} bytes > read.max_record_bytes={config.max_record_bytes}", "")
    if gz and size == 0:
        return None, bad_record(input_file, 0, "unreadable_file", "empty .gz file (0 bytes): not gzip data", "")
    try:
        with _open_binary(input_file) as handle:
            raw = handle.read(config.max_record_bytes + 1)
    except gzip.BadGzipFile as exc:
        return None, bad_record(input_file, 0, "unreadable_file", f"not a gzip file: {exc}", "")
    except (EOFError, zlib.error) as exc:
        return None, bad_record(input_file, 1, "truncated_file", f"{type(exc).__name__}: {exc}", "")
    binary = binary_content(raw[:_SNIFF_BYTES])
    if binary is not None:
        return None, bad_record(input_file, 0, "unreadable_file", binary, "")
    if len(raw) > config.max_record_bytes:
        return None, bad_record(input_file, 1, "record_too_large", f"more than read.max_record_bytes={config.max_record_bytes} bytes", "")
    encoding = config.encoding if config.encoding != "auto" else sniff_encoding(raw[:_SNIFF_BYTES])
    try:
        return raw.decode(encoding), None
    except UnicodeDecodeError as exc:
        return None, bad_record(input_file, 1, "invalid_encoding", f"not {encoding}: {exc}", raw.decode("utf-8", "replace"))


def _plain_doc(input_file: InputFile, config: ReaderConfig, text: str, line: int, doc_id: str, **meta: Any) -> Document:
    meta.update(src_file=input_file.path, src_line=line)
    return Document(id=doc_id, text=text, source=input_file.path, domain=input_file.domain or config.default_domain, meta=meta)


def _read_text(input_file: InputFile, config: ReaderConfig) -> Iterator[Document]:
    text, bad = _read_whole(input_file, config)
    if bad is not None:
        yield bad
        return
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if config.text_unit == "file":
        if not text.strip():
            yield bad_record(input_file, 1, "no_text", "file is empty or blank", text, field="text")
        else:
            yield _plain_doc(input_file, config, text, 1, input_file.name)
        return
    for start_line, para in _paragraph_blocks(text):
        if para.strip():
            yield _plain_doc(input_file, config, para, start_line, f"{input_file.name}:{start_line}")


def _paragraph_blocks(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(first_line_no, block)`` for blocks separated by blank lines."""
    block: list[str] = []
    start = 1
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not block:
                start = line_no
            block.append(line)
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


def _read_html(input_file: InputFile, config: ReaderConfig) -> Iterator[Document]:
    text, bad = _read_whole(input_file, config)
    if bad is not None:
        yield bad
        return
    if not text.strip():
        yield bad_record(input_file, 1, "no_text", "file is empty or blank", text, field="text")
        return
    yield _plain_doc(input_file, config, text, 1, input_file.name, format="html")


# --------------------------------------------------------------------------------- writers


#: Rows per row group of every record Parquet file, local and Spark (:class:`ParquetPartWriter`).
ROWS_PER_GROUP = 2048
#: ``pyarrow.parquet.ParquetWriter`` options of every record Parquet file, local and Spark.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd"}


def write_parquet(docs: Iterable[Document], path: str | os.PathLike, rejected: bool = False, rows_per_group: int = ROWS_PER_GROUP) -> int:
    """Atomically write documents to one Parquet file; returns the number of rows."""
    schema = REJECTED_SCHEMA if rejected else DOC_SCHEMA
    count = 0
    with atomic_file(path, "wb") as handle:
        with pq.ParquetWriter(handle, schema, **PARQUET_OPTIONS) as writer:
            batch: list[Document] = []
            for doc in docs:
                batch.append(doc)
                if len(batch) >= rows_per_group:
                    writer.write_table(documents_to_table(batch, rejected))
                    count += len(batch)
                    batch = []
            if batch or count == 0:
                writer.write_table(documents_to_table(batch, rejected))
                count += len(batch)
    return count


def warm_parquet_writer(docs: Iterable[Document]) -> None:
    """Write ``docs`` under both record schemas into memory and discard the bytes.

    A process's first Arrow conversion from Python lists imports pyarrow's pandas glue (it
    checks whether the input is a pandas object) and its first writer loads the codec: a few
    hundredths of a CPU second. A long-running writer (the Kafka ingest, :class:`etl.kafka.ingest.WindowWriter`)
    calls this in its warm-up, so that is paid before the first record, not in the first window."""
    docs = list(docs)
    for rejected in (False, True):
        with pq.ParquetWriter(io.BytesIO(), REJECTED_SCHEMA if rejected else DOC_SCHEMA, **PARQUET_OPTIONS) as writer:
            writer.write_table(documents_to_table(docs, rejected))


class ParquetPartWriter:
    """One Parquet part file written by one task attempt, committed by moving it onto its name.

    The file is written under ``<root>/_temporary/<attempt>/<name>`` and moved to
    ``<root>/<name>`` by :meth:`commit` (:func:`etl.io.fs.commit_file`), so a failed or
    speculative attempt never leaves a partial file under the final name, and two attempts of
    one task (same rows, same bytes) give one file.  The writer settings are
    :func:`write_parquet`'s (:data:`PARQUET_OPTIONS`, row groups of exactly
    :data:`ROWS_PER_GROUP` rows whatever batches arrive), so local and Spark outputs of the
    same rows are written the same way.  ``root`` is a local path or a URI (:func:`etl.io.fs.resolve`).
    """

    def __init__(self, root: str, name: str, schema: pa.Schema, attempt: str, rows_per_group: int = ROWS_PER_GROUP):
        from etl.io import fs as jfs

        self.filesystem, self.root = jfs.resolve(root)
        self.name, self.schema, self.rows_per_group = name, schema, rows_per_group
        self.tmp = jfs.join(self.root, jfs.TEMPORARY_DIR, attempt, name)
        self.final = jfs.join(self.root, name)
        for folder in {posixpath.dirname(self.tmp), posixpath.dirname(self.final)}:
            self.filesystem.create_dir(folder, recursive=True)
        self.stream = self.filesystem.open_output_stream(self.tmp)
        self.writer = pq.ParquetWriter(self.stream, schema, **PARQUET_OPTIONS)
        self.pending: list[pa.RecordBatch] = []
        self.num_pending = 0
        self.num_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer ``batch`` (columns named as the schema's) and write every full row group."""
        if batch.num_rows == 0:
            return
        # each batch in the schema's exact form: batches of one task may differ in field
        # nullability or metadata (Spark's Arrow batches after a join or union), which
        # Table.from_batches refuses to mix
        columns = [batch.column(f.name) for f in self.schema]
        columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, self.schema)]
        self.pending.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self.num_pending += batch.num_rows
        if self.num_pending >= self.rows_per_group:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.Table.from_batches(self.pending, schema=self.schema)
        full = table.num_rows if final else table.num_rows - table.num_rows % self.rows_per_group
        for start in range(0, full, self.rows_per_group):  # one single-chunk table per row group, as write_parquet
            self.writer.write_table(table.slice(start, min(self.rows_per_group, full - start)).combine_chunks())
        rest = table.slice(full).combine_chunks()
        self.pending = rest.to_batches() if rest.num_rows else []
        self.num_pending = rest.num_rows
        self.num_rows += full

    def commit(self) -> int:
        """Finish the file and move it onto its final name; returns the number of rows."""
        from etl.io import fs as jfs

        if self.pending:
            self._flush(final=True)
        if self.num_rows == 0:
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()
        self.stream.close()
        jfs.commit_file(self.filesystem, self.tmp, self.final)
        return self.num_rows

    def abort(self) -> None:
        """Close and delete the temporary file (after a failure)."""
        for close in (self.writer.close, self.stream.close):
            try:
                close()
            except Exception:  # noqa: BLE001 - the failure being handled is the one to report
                pass
        try:
            self.filesystem.delete_file(self.tmp)
        except OSError:
            pass


def write_jsonl(docs: Iterable[Document], path: str | os.PathLike) -> int:
    """Atomically write documents as JSON Lines (``.gz`` compresses); returns the count."""
    count = 0
    mode = "wb"
    with atomic_file(path, mode) as raw:
        handle = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if str(path).endswith(".gz") else raw
        for doc in docs:
            row = {k: v for k, v in doc.to_row().items() if v is not None}
            row["meta"] = doc.meta
            handle.write(json.dumps(row, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
            count += 1
        if handle is not raw:
            handle.close()
    return count


def read_parquet_dir(path: str | os.PathLike) -> Iterator[Document]:
    """Read every Parquet part of a stage output directory (e.g. ``<out>/kept``), in name order."""
    for input_file in list_input_files([path]):
        for batch in pq.ParquetFile(input_file.path).iter_batches(batch_size=2048):
            from etl.core.document import table_to_documents

            yield from table_to_documents(batch)


__all__ = [
    "ReaderConfig", "InputFile", "FileSpan", "splittable", "byte_ranges", "count_span_lines",
    "list_input_files", "is_data_file", "is_stage_output", "stage_kept_dir", "file_format", "read_inputs", "read_file",
    "record_to_document", "mark_duplicate_id", "sniff_encoding", "write_parquet", "write_jsonl", "ParquetPartWriter",
    "ROWS_PER_GROUP", "PARQUET_OPTIONS",
    "read_parquet_dir", "dumps_meta", "UNREADABLE", "NothingRead", "nothing_read_message",
]

_bad = bad_record  # backwards-compatible private name
