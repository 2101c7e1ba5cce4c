"""The catalog of metrics every report reads: which student metrics a headline brings,
how each is shown, and which are better lower (the sweep summary, the run's table, the
plots, ``llm_table`` and ``topk_fidelity`` all read it here).
"""

from __future__ import annotations

# Per headline metric (results.json "headline"): the student metrics a summary reports,
# as (results.json key inside "student"/"baseline", human-readable name). The first is
# the headline itself, after the *last* training step; the second its best epoch.
METRICS_BY_HEADLINE = {
    "test_accuracy": (
        ("test_accuracy", "final test accuracy"),
        ("best_test_accuracy", "best-step test accuracy"),
        ("agreement", "agreement with teacher"),
        ("kl_to_teacher", "KL(teacher || student)"),
        ("ece", "expected calibration error"),
    ),
    "exact_match": (
        ("exact_match", "final exact match"),
        ("best_exact_match", "best-epoch exact match"),
        ("agreement", "agreement with teacher (per token)"),
        ("kl_to_teacher", "KL(teacher || student) per token"),
        ("nll", "nll per token"),
    ),
    "nll": (
        ("nll", "final nll per token"),
        ("best_nll", "best-epoch nll per token"),
        ("agreement", "agreement with teacher (per token)"),
        ("kl_to_teacher", "KL(teacher || student) per token"),
        ("perplexity", "perplexity"),
        ("bits_per_byte", "bits per byte (comparable across tokenizers)"),
    ),
    "probe_accuracy": (
        ("probe_accuracy", "final linear-probe accuracy"),
        ("best_probe_accuracy", "best-evaluation linear-probe accuracy"),
        ("knn_accuracy", "10-NN accuracy"),
        ("probe_retention", "probe accuracy / teacher's"),
        ("speedup_b64", "sentences/s / teacher's, batch 64"),
        ("speedup_b1", "sentences/s / teacher's, batch 1"),
        ("neighbour_overlap", "10-NN overlap with the teacher"),
        ("mean_cosine", "mean cosine to the teacher"),
    ),
    "bits_per_byte": (         # a text run's nll in bits per byte: across tokenizers
        ("bits_per_byte", "final bits per byte"),
        ("best_bits_per_byte", "best-epoch bits per byte"),
        ("nll_per_char", "nll per character"),
        ("nll", "nll per token"),
        ("agreement", "agreement with teacher (per token)"),
        ("kl_to_teacher", "KL(teacher || student) per token"),
    ),
    "test_loss": (
        ("test_loss", "final held-out denoising loss"),
        ("best_test_loss", "best-evaluation held-out denoising loss"),
    ),
}
# How a headline metric is shown: (factor, unit, decimals). Fractions as percentages.
DISPLAY = {"test_accuracy": (100.0, "%", 2), "exact_match": (100.0, "%", 2),
           "nll": (1.0, "nats", 4), "probe_accuracy": (100.0, "%", 2),
           "test_loss": (1.0, "", 4), "bits_per_byte": (1.0, "bits", 4),
           "nll_per_char": (1.0, "nats", 4)}
LOWER_IS_BETTER = frozenset({"nll", "test_loss", "bits_per_byte", "nll_per_char"})
# How summary.md shows a student metric after the headline and its best step:
# (column header, scale, decimals); metrics not listed show their name, unscaled.
SUMMARY_COLUMNS = {
    "agreement": ("agreement %", 100.0, 2), "kl_to_teacher": ("KL(teacher‖student)", 1.0, 4),
    "ece": ("ECE %", 100.0, 2), "knn_accuracy": ("10-NN acc %", 100.0, 2),
    "probe_retention": ("probe retention %", 100.0, 2),
    "speedup_b64": ("speedup ×, batch 64", 1.0, 2), "speedup_b1": ("speedup ×, batch 1", 1.0, 2),
    "neighbour_overlap": ("10-NN overlap %", 100.0, 2),
    "bits_per_byte": ("bits/byte", 1.0, 4), "nll_per_char": ("nll/char (nats)", 1.0, 4),
}


def lower_is_better(headline: str) -> bool:
  """Whether a smaller ``headline`` is better (a gain is then baseline − student).

  >>> lower_is_better("nll"), lower_is_better("exact_match")
  (True, False)
  """
  return headline in LOWER_IS_BETTER
