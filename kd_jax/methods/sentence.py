"""Sentence-encoder distillation (task family ``embedding``): DistilBERT (Sanh et al. 2019)
matches the sentence embeddings and the hidden states (distance: ``config.divergence``,
cosine or mse); MiniLM (Wang et al. 2020, 2021) the last layer's attention and value
relations. Their "logits" are sentence embeddings ``[B, D]`` and their features a
transformer's hidden states and self-attention.
"""

from __future__ import annotations

import re

import jax.numpy as jnp

from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.methods.base import Method
from kd_jax.objectives import attention_losses, features


def _sentence_cosine(settings, step, s_embeddings, t_embeddings, labels, mask):
  """``distilbert``'s output term: 1 − cos between the student's and the teacher's sentence
  embeddings ``[B, D]`` (DistilBERT's cosine embedding loss), mean over the real rows
  (``mask`` ``[B, T]``: a row with any real token)."""
  del settings, step, labels
  rows = jnp.any(mask, axis=-1) if mask.ndim > 1 else mask
  loss = features.hidden_state_loss(s_embeddings[:, None], t_embeddings[:, None], mask=rows)
  return loss, {"embedding_cosine_distance": loss}


def _no_output_term(settings, step, s_outputs, t_outputs, labels, mask):
  """``minilm``: only the self-attention relations are distilled (its output may be of
  another width than the teacher's)."""
  del settings, step, s_outputs, t_outputs, labels, mask
  return 0.0, {}


def _equal_widths(config, s_name, s_shape, t_name, t_shape) -> None:
  if s_shape[-1] != t_shape[-1]:
    raise ConfigError("feature_layers", f"feature_layers: {config.method} compares hidden states "
                      f"of equal width; student {s_name} is {s_shape[-1]} wide, teacher "
                      f"{t_name} {t_shape[-1]} (use method='minilm' across widths)")


def _relation_heads_divide(config, s_name, s_shape, t_name, t_shape) -> None:
  if not (s_name.startswith("qkv_") and t_name.startswith("qkv_")):
    raise ConfigError("feature_layers", f"feature_layers: minilm compares self-attention "
                      f"layers (qkv_<i>); got {s_name!r} → {t_name!r}")
  heads = config.encoder.relation_heads
  if s_shape[-1] % (3 * heads) or t_shape[-1] % (3 * heads):      # q|k|v concatenated
    raise ConfigError("encoder.relation_heads", f"encoder.relation_heads={heads} must divide "
                      f"both widths: student {s_name} {s_shape[-1] // 3}, teacher {t_name} "
                      f"{t_shape[-1] // 3}")


def _layers(features: dict, kind: str) -> list[int]:
  """The layer indices i of the features named ``<kind>_<i>``, in order."""
  return sorted(int(m.group(1)) for n in features if (m := re.fullmatch(rf"{kind}_(\d+)", n)))


def _uniform_hidden_pairs(student_features: dict, teacher_features: dict) -> dict[str, str]:
  """DistilBERT's layer map: student layer j ends where teacher layer ⌈(j+1)·L_t/L_s⌉ − 1
  ends (3 of 6: 0→1, 1→3, 2→5), the student's last layer on the teacher's last."""
  s_layers, t_layers = _layers(student_features, "hidden"), _layers(teacher_features, "hidden")
  last = lambda j: -(-(j + 1) * len(t_layers) // len(s_layers)) - 1   # ⌈(j+1)·L_t/L_s⌉ − 1
  return {f"hidden_{j}": f"hidden_{t_layers[last(j)]}" for j in s_layers}


def _last_attention_pair(student_features: dict, teacher_features: dict) -> dict[str, str]:
  """MiniLM: the last self-attention layer of each model."""
  s_layers, t_layers = _layers(student_features, "qkv"), _layers(teacher_features, "qkv")
  return {f"qkv_{s_layers[-1]}": f"qkv_{t_layers[-1]}"} if s_layers and t_layers else {}


def _check_distilbert(config) -> None:
  checks.choice("divergence", config.divergence, ("cosine", "mse"))


METHODS = {
    "distilbert": Method(_sentence_cosine, ("embedding",), features.hidden_state_loss,
                         feature_options=lambda c: {"distance": c.divergence},
                         default_pairs=_uniform_hidden_pairs, check_pair=_equal_widths,
                         check=_check_distilbert),
    "minilm": Method(_no_output_term, ("embedding",), attention_losses.self_attention_loss,
                     feature_options=lambda c: {"num_heads": c.encoder.relation_heads},
                     default_pairs=_last_attention_pair, check_pair=_relation_heads_divide),
}
