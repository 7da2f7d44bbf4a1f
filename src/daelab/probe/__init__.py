"""Feature probe: are the DAE's codes better features than raw pixels?

:func:`probe_run` extracts the encoder's codes, raw pixels and PCA features, trains the study's
classifier on each over several seeds (plus a linear probe and kNN), and compares them with paired
differences and a verdict, written to ``probe.json``/``.md``. The private modules serve this stage
only: ``_pipeline`` (the run), ``_classifier`` (the study's classifier, stacked over seeds),
``_shallow`` (logistic regression and kNN) and ``_figures``.
"""
from daelab.probe._pipeline import (
    CLASS_NAMES,
    COMPARISONS,
    FEATURES,
    JSON_FILE,
    MARKDOWN_FILE,
    PROBES,
    ProbeConfig,
    compare,
    encode_images,
    encode_noisy,
    extract_features,
    format_markdown,
    pca_features,
    probe_run,
)

__all__ = ["CLASS_NAMES", "COMPARISONS", "FEATURES", "JSON_FILE", "MARKDOWN_FILE", "PROBES", "ProbeConfig",
           "compare", "encode_images", "encode_noisy", "extract_features", "format_markdown", "pca_features",
           "probe_run"]
