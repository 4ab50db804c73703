"""jinglian augmentation: back-translation, masked-LM substitution, entity swap.

Each method is a batched step over documents that yields every input unchanged plus new
variant records (``<parent>~bt0``, ``~mlm0``, ``~es0``) with ``meta.augment`` lineage; a
similarity guard rejects variants that are too close to or too far from their parent.
``augment.pipeline.build_pipeline`` composes them for the local runner (``python -m augment``)
and ``spark_jobs/augment_corpus.py``.  Importing this package never imports torch or transformers:
models load lazily in :mod:`augment.models`, once per process.
"""
