"""The `Document` record that flows through every jinglian stage.

Between stages documents are stored as Parquet with the columns of :data:`DOC_SCHEMA`
(``meta`` as a JSON string).  Rejected documents carry two extra columns,
``drop_reason`` and ``drop_step`` (:data:`REJECTED_SCHEMA`); the same values are mirrored
into ``meta`` so a rejected record read back as a `Document` still says why it was dropped.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: Column order of a kept-records Parquet file.
DOC_COLUMNS = ("id", "text", "source", "domain", "lang", "meta")
DOC_SCHEMA = pa.schema([(name, pa.string()) for name in DOC_COLUMNS])
#: Rejected records: the document columns plus why and where they were dropped.
REJECTED_SCHEMA = pa.schema(list(DOC_SCHEMA) + [("drop_reason", pa.string()), ("drop_step", pa.string())])


@dataclass(slots=True)
class Document:
    """One text and its provenance.

    ``meta`` holds everything else: provenance (``src_file``, ``src_line``), scores,
    ``drop_reason``, augmentation lineage, dialogue structure.
    """

    id: str
    text: str
    source: str = ""
    domain: str = "general"
    lang: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def drop_reason(self) -> str | None:
        """The reason this document was dropped, or ``None`` while it is kept."""
        return self.meta.get("drop_reason")

    @property
    def dropped(self) -> bool:
        return "drop_reason" in self.meta

    def drop(self, reason: str, step: str, **detail: Any) -> Document:
        """Mark the document as rejected by ``step`` for ``reason`` (first reason wins)."""
        if not self.dropped:
            self.meta["drop_reason"] = reason
            self.meta["drop_step"] = step
            self.meta.update(detail)
        return self

    def to_row(self) -> dict[str, Any]:
        """A flat dict with ``meta`` serialised, plus the rejected columns."""
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "domain": self.domain,
            "lang": self.lang,
            "meta": dumps_meta(self.meta),
            "drop_reason": self.meta.get("drop_reason"),
            "drop_step": self.meta.get("drop_step"),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        """Inverse of :meth:`to_row`; accepts ``meta`` as a dict or a JSON string."""
        raw = meta = row.get("meta")
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta else {}
            except (ValueError, RecursionError):  # a hand-made Parquet file: reject the row, keep the string
                meta = None
        elif meta is None:
            meta = {}
        if meta is not None and not isinstance(meta, dict):
            try:
                meta = dict(meta)
            except (TypeError, ValueError):
                meta = None
        if meta is None:
            meta = {"meta_raw": raw if isinstance(raw, str) else str(raw)[:100_000], "error": "'meta' is not a JSON object",
                    "drop_reason": "invalid_record", "drop_step": "read"}
        return cls(
            id=str(row["id"]),
            text=row.get("text") or "",
            source=row.get("source") or "",
            domain=row.get("domain") or "general",
            lang=row.get("lang") or "",
            meta=meta,
        )


def dumps_meta(meta: dict[str, Any]) -> str:
    """Serialise ``meta`` deterministically (sorted keys, UTF-8 kept readable)."""
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def rows_to_batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """``pa.RecordBatch.from_pylist(rows, schema=schema)`` built column by column: same batch
    (a missing key is null), about 20x faster (1.3 against 25 us per document row)."""
    return pa.RecordBatch.from_arrays([pa.array([r.get(f.name) for r in rows], f.type) for f in schema], schema=schema)


def documents_to_table(docs: Iterable[Document], rejected: bool = False) -> pa.Table:
    """Build an Arrow table (kept or rejected schema) from documents."""
    schema = REJECTED_SCHEMA if rejected else DOC_SCHEMA
    columns: dict[str, list] = {name: [] for name in schema.names}
    for doc in docs:
        row = doc.to_row()
        for name in schema.names:
            columns[name].append(row[name])
    return pa.table(columns, schema=schema)


def table_to_documents(table: pa.Table | pa.RecordBatch) -> Iterator[Document]:
    """Yield documents from an Arrow table or record batch with at least ``id`` and ``text``."""
    names = set(table.schema.names)
    cols = {name: table.column(name).to_pylist() for name in DOC_COLUMNS if name in names}
    for i in range(table.num_rows):
        yield Document.from_row({name: values[i] for name, values in cols.items()})
