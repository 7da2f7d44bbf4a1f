"""Feature probe: are the DAE's codes better features than raw pixels?

:func:`probe_run` extracts the encoder's codes, raw pixels and PCA features, trains the study's
classifier on each over several seeds (plus a linear probe and kNN), and compares them with paired
differences and a verdict, written to ``probe.json``/``.md``; :func:`probe_runs` does so over
several trained DAEs (DAE seeds), with intervals over DAE seeds x classifier seeds x test images.
The private modules serve this stage only: ``_config`` (the names and :class:`ProbeConfig`),
``_features`` (feature extraction, PCA), ``_jobs`` (the picklable probe jobs and their outcomes),
``_compare`` (correctness over the design, intervals, verdicts), ``_pipeline`` (the run, top to bottom),
``_stacked`` (the study's classifier, stacked over seeds), ``_classifier`` (its training),
``_classifier_step`` (its fused training step), ``_shallow`` (logistic regression and kNN),
``_markdown`` and ``_figures``.
"""
from daelab.probe._compare import compare
from daelab.probe._config import (
    CLASS_NAMES,
    COMPARISONS,
    CORRECT_FILE,
    DAE_FEATURES,
    FEATURES,
    JSON_FILE,
    MARKDOWN_FILE,
    PROBES,
    ProbeConfig,
)
from daelab.probe._features import encode_images, encode_noisy, extract_features, pca_features
from daelab.probe._markdown import format_markdown
from daelab.probe._pipeline import load_correct, probe_run, probe_runs

__all__ = ["CLASS_NAMES", "COMPARISONS", "CORRECT_FILE", "DAE_FEATURES", "FEATURES", "JSON_FILE", "MARKDOWN_FILE",
           "PROBES", "ProbeConfig", "compare", "encode_images", "encode_noisy", "extract_features", "format_markdown",
           "load_correct", "pca_features", "probe_run", "probe_runs"]
