"""Model-based quality filter: a classifier scores each document's quality, the stage keeps
documents scoring at least a threshold (0.7 by default) and rejects the rest as
``low_quality_score``.

Layout:

* :mod:`.config`     the ``quality_model:`` params section (stage and training knobs);
* :mod:`.classifier` the interface every kind implements, the model-directory manifest and
                     the per-process model cache (:func:`load_classifier`);
* :mod:`.ngram`      a linear classifier on hashed word and character n-grams (scikit-learn);
* :mod:`.fasttext`   the same idea with the fastText library (its ``model.bin`` is what
                     DataTrove's ``FastTextClassifierFilter`` loads);
* :mod:`.bert`       a fine-tuned BERT-family sequence classifier (transformers);
* :mod:`.data`       labelled sets, the held-out split, synthetic negatives for the demo;
* :mod:`.metrics`    precision, recall, AUC and the calibration plot;
* :mod:`.train`      ``python -m etl.quality_model train``;
* :mod:`.stage`      the stage (``python -m etl.quality_model``, ``spark_jobs/quality_filter.py``).

See docs/quality_model.md.
"""
