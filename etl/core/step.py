"""The step contract shared by the local runner, the Spark adapter and the Kafka ingest.

A *step* is ``Callable[[Iterable[Document]], Iterator[Document]]`` with a ``name``.  Steps
never swallow a document: a filter marks it with :meth:`Document.drop` and yields it on,
and :class:`Pipeline` routes already-dropped documents around every later step, so the
final stream holds every input exactly once (kept plus rejected equals input).

Three helpers build steps from plain per-document functions:

* :func:`filter_step` wraps ``fn(doc) -> reason | None``;
* :func:`map_step` wraps ``fn(doc) -> doc`` (annotators, transforms);
* :func:`batch_step` wraps ``fn(list[doc]) -> list[doc]`` for batched model calls.

Per-record exceptions follow the ``on_error`` policy: ``"skip"`` rejects the record with
reason ``error_<ExceptionType>`` and carries on, ``"raise"`` stops the job.
"""
from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from etl.core.document import Document

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("skip", "raise")


class Step(Protocol):
    name: str

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]: ...


@dataclass(frozen=True)
class FunctionStep:
    """A named step built from a function over a document stream."""

    name: str
    fn: Callable[[Iterable[Document]], Iterator[Document]]
    per_document: bool = False
    """One output per live input, in order, each depending on that document only (filter and
    map steps): a :class:`Pipeline` of such steps may run them block by block."""

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        return self.fn(docs)


def _reject_error(doc: Document, step: str, exc: Exception, on_error: str) -> Document:
    if on_error == "raise":
        where = f"{doc.meta.get('src_file', '?')}: record {doc.meta.get('src_line', '?')} (id {doc.id!r})"
        raise RuntimeError(f"{where}: step {step!r} failed: {type(exc).__name__}: {exc}") from exc
    logger.warning("step %s failed on %s: %s: %s", step, doc.id, type(exc).__name__, exc)
    return doc.drop(f"error_{type(exc).__name__}", step, error=str(exc)[:500])


def filter_step(name: str, fn: Callable[[Document], str | None], on_error: str = "skip") -> FunctionStep:
    """A step that drops each document for which ``fn`` answers a reason."""

    def run(docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            try:
                reason = fn(doc)
            except Exception as exc:  # noqa: BLE001 - routed by the on_error policy
                yield _reject_error(doc, name, exc, on_error)
                continue
            yield doc.drop(reason, name) if reason else doc

    return FunctionStep(name, run, per_document=True)


def map_step(name: str, fn: Callable[[Document], Document], on_error: str = "skip") -> FunctionStep:
    """A step that transforms or annotates each document in place (or returns a new one)."""

    def run(docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            try:
                out = fn(doc)
            except Exception as exc:  # noqa: BLE001
                yield _reject_error(doc, name, exc, on_error)
                continue
            yield doc if out is None else out

    return FunctionStep(name, run, per_document=True)


def batched(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    """Consecutive lists of at most ``size`` documents."""
    it = iter(docs)
    while batch := list(itertools.islice(it, size)):
        yield batch


def batch_step(name: str, fn: Callable[[list[Document]], list[Document]], batch_size: int = 64,
               on_error: str | None = "skip") -> FunctionStep:
    """A step that calls ``fn`` on batches (for model inference); ``fn`` may add new documents.

    With ``on_error`` ``"skip"`` or ``"raise"`` a failing batch follows that policy for every
    document in it; ``None`` means ``fn`` records its own failures (exceptions propagate), for
    steps such as the augmenters that must never reject the originals they were given.
    """

    def run(docs: Iterable[Document]) -> Iterator[Document]:
        for batch in batched(docs, batch_size):
            yield from (fn(batch) if on_error is None else _run_batch(batch))

    def _run_batch(batch: list[Document]) -> list[Document]:
        try:
            return fn(batch)
        except Exception as exc:  # noqa: BLE001
            return [_reject_error(doc, name, exc, on_error) for doc in batch]

    return FunctionStep(name, run)


class Pipeline:
    """Compose steps; documents dropped by one step bypass all later ones.

    ``Pipeline(steps)(docs)`` is itself a step.  Order of the output may differ from the
    input for batched steps, but every input document comes out exactly once.

    When every step is per-document (:attr:`FunctionStep.per_document`: filter and map steps),
    documents run in blocks of ``block_size``: each step over the whole block, then the next.
    The output is the same, in the same order, as one document through all steps at a time,
    but each step's tables and code stay in the CPU's caches across a block (the clean stage:
    language identification's 60 MB of tables twice as fast, the whole stage about 1.2x,
    docs/benchmarks.md#clean).  ``block_size=1`` streams document by document.
    """

    def __init__(self, steps: Sequence[Step], name: str = "pipeline", block_size: int = 256):
        names = [s.name for s in steps]
        dupes = [n for n, c in collections.Counter(names).items() if c > 1]
        if dupes:
            raise ValueError(f"step names must be unique, repeated: {dupes}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.steps = list(steps)
        self.name = name
        self.block_size = block_size

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def blocked(self) -> bool:
        """Whether documents run block by block (see the class docstring)."""
        return self.block_size > 1 and all(getattr(s, "per_document", False) for s in self.steps)

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        if self.blocked:
            return self._blocks(docs)
        stream: Iterable[Document] = docs
        for step in self.steps:
            stream = _bypass_dropped(step, stream)
        return iter(stream)

    def _blocks(self, docs: Iterable[Document]) -> Iterator[Document]:
        for block in batched(docs, self.block_size):
            for step in self.steps:
                block = list(_bypass_dropped(step, block))
            yield from block


def _bypass_dropped(step: Step, stream: Iterable[Document]) -> Iterator[Document]:
    """Feed live documents to ``step``; pass dropped ones straight through."""
    bypass: collections.deque[Document] = collections.deque()

    def live() -> Iterator[Document]:
        for doc in stream:
            if doc.dropped:
                bypass.append(doc)
            else:
                yield doc

    for out in step(live()):
        while bypass:
            yield bypass.popleft()
        yield out
    while bypass:
        yield bypass.popleft()


def split_kept_rejected(docs: Iterable[Document]) -> tuple[list[Document], list[Document]]:
    """Materialise a stream into (kept, rejected) lists; for tests and small data."""
    kept: list[Document] = []
    rejected: list[Document] = []
    for doc in docs:
        (rejected if doc.dropped else kept).append(doc)
    return kept, rejected
