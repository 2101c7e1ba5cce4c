"""The trainable side of a run: which (student layer → teacher layer) pairs a method
matches, checked on shapes alone, and the :class:`Student` that adds FitNets' adapters.
"""

from __future__ import annotations

from flax import nnx
import jax.numpy as jnp

from kd_jax import models
from kd_jax.core.errors import ConfigError
from kd_jax.methods.base import Method

# Methods whose feature term compares spatial maps [B, H, W, C] rather than vectors.
_SPATIAL_METHODS = ("at",)
# Methods that compare features of equal height and width.
_SAME_SPATIAL_SHAPE = ("fitnets", "at")


def feature_pairs(config, student_features: dict, teacher_features: dict,
                  method: Method) -> dict[str, str]:
  """The (student layer → teacher layer) pairs a method matches, validated.

  ``config.feature_layers`` wins when set. Otherwise FitNets, RKD, SP and PKT
  match the penultimate ``embedding`` vectors (defined for every model), and AT
  matches every spatial map name the two models share.

  Args:
    config: the experiment config.
    student_features, teacher_features: ``{name: shape}`` from
      :func:`kd_jax.models.feature_shapes`.
    method: ``config.method``'s registry entry.

  Raises:
    ValueError: naming ``feature_layers`` and the valid names, when a layer does
      not exist or the shapes cannot be compared by the method.
  """
  entry, method = method, config.method
  if entry.feature_loss is None:
    return {}
  pairs = dict(config.feature_layers)
  default_pairs = entry.default_pairs
  if not pairs and default_pairs is not None:
    pairs = default_pairs(student_features, teacher_features)
  if not pairs:
    if method in _SPATIAL_METHODS:
      shared = [n for n in student_features if n in teacher_features
                and len(student_features[n]) == len(teacher_features[n]) == 4    # NHWC maps
                and student_features[n][1:3] == teacher_features[n][1:3]]
      if not shared:
        raise ConfigError(
            "feature_layers", f"method={method!r} needs spatial feature maps of equal height and width in "
            f"student and teacher; student {config.student.model} has "
            f"{_describe(student_features)}, teacher {config.teacher.model} has "
            f"{_describe(teacher_features)}. Set feature_layers.")
      pairs = {n: n for n in shared}
    else:
      pairs = {"embedding": "embedding"}
  for s_name, t_name in pairs.items():
    if s_name not in student_features:
      raise ConfigError("feature_layers", f"feature_layers: student layer {s_name!r} does not "
                        f"exist; valid: {', '.join(student_features)}")
    if t_name not in teacher_features:
      raise ConfigError("feature_layers", f"feature_layers: teacher layer {t_name!r} does not "
                        f"exist; valid: {', '.join(teacher_features)}")
    s_shape, t_shape = student_features[s_name], teacher_features[t_name]
    if method in _SAME_SPATIAL_SHAPE and s_shape[1:-1] != t_shape[1:-1]:
      raise ConfigError(
          "feature_layers", f"feature_layers: {method} needs equal spatial shapes; student {s_name} "
          f"{s_shape[1:-1]} vs teacher {t_name} {t_shape[1:-1]}")
    if method == "at" and len(s_shape) != 4:
      raise ConfigError("feature_layers",
                        f"feature_layers: at needs NHWC maps; student {s_name} has shape {s_shape}")
    if entry.check_pair is not None:
      entry.check_pair(config, s_name, s_shape, t_name, t_shape)
  return pairs


def _describe(shapes: dict) -> str:
  return ", ".join(f"{n}{tuple(s[1:])}" for n, s in shapes.items())


class Student(nnx.Module):
  """The trainable side of a run: the student model plus FitNets adapters.

  ``__call__`` returns ``(logits, features)`` with ``features`` keyed by the
  student layer names of ``pairs``, adapted to the teacher's width for FitNets.
  """

  def __init__(self, model: nnx.Module, pairs: dict[str, str], adapter_widths: dict[str, tuple],
               *, rngs: nnx.Rngs):
    self.model = model
    self.pairs = dict(pairs)
    # FitNets' regressor: a linear map on the channel axis (1×1 conv for NHWC maps).
    self.adapters = nnx.Dict({
        name: nnx.Linear(s_width, t_width, rngs=rngs)
        for name, (s_width, t_width) in adapter_widths.items()})

  def __call__(self, x, *, train: bool = False):
    if not self.pairs:
      return self.model(x, train=train), {}
    logits, features = self.model(x, train=train, return_features=True)
    selected = {}
    for name in self.pairs:
      f = features[name]
      if name in self.adapters:
        f = self.adapters[name](f.astype(jnp.float32))
      selected[name] = f
    return logits, selected


def trainable_student(config, student_model: nnx.Module, teacher_model: nnx.Module,
                      method: Method):
  """``(module, pairs)``: what a run of ``config`` trains and checkpoints, and its layer pairs.

  ``module`` is ``student_model`` itself for a method without a teacher, else a
  :class:`Student` with the method's pairs and FitNets adapters. The pairs are
  validated on shapes alone (:func:`kd_jax.models.feature_shapes`), before anything
  compiles; ``teacher_model`` may be abstract (``nnx.eval_shape``).
  """
  if method.student_module is not None:
    return method.student_module(config, student_model), {}
  if not method.runs_teacher(config):
    return student_model, {}
  s_shapes = t_shapes = {}
  if method.feature_loss is not None:
    s_shapes, t_shapes = models.feature_shapes(student_model), models.feature_shapes(teacher_model)
  pairs = feature_pairs(config, s_shapes, t_shapes, method)
  widths = adapter_widths(pairs, s_shapes, t_shapes) if method.adapters else {}
  return Student(student_model, pairs, widths, rngs=nnx.Rngs(config.seed + 1)), pairs


def adapter_widths(pairs, student_features, teacher_features) -> dict[str, tuple[int, int]]:
  """FitNets adapters: ``{student layer: (student width, teacher width)}``."""
  return {s: (student_features[s][-1], teacher_features[t][-1]) for s, t in pairs.items()}
