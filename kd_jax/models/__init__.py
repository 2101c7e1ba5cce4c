"""Model registry: image classifiers that also expose named features for KD.

    model = models.create("resnet20", num_classes=10, rngs=nnx.Rngs(0),
                          input_shape=(32, 32, 3))
    logits = model(x, train=True)                                   # [B, 10] f32
    logits, feats = model(x, return_features=True)                  # feats: dict
    models.feature_shapes(model)   # {"stem": (1, 32, 32, 16), ..., "embedding": (1, 64)}

Every model takes a float NHWC batch ``x`` [B, H, W, C] (already normalised) and
``__call__(x, *, train=False, return_features=False)``. ``model.feature_names``
lists the feature names it can return; all include ``"embedding"``, the
penultimate vector [B, D] fed to the classifier. ``model.input_shape`` is the
per-example ``(H, W, C)`` it was built for (the ``input_shape`` kwarg, default
Fashion-MNIST's ``(28, 28, 1)``).

Parameters are float32 (``nnx.Param``); BatchNorm running statistics are
``nnx.BatchStat``. ``dtype`` is the computation dtype; logits are float32, features
are in the computation dtype.

In a pure jitted step, merge the module inside the innermost transform that calls
it with ``train=True``; under ``jax.grad`` pass ``copy=True`` so the BatchNorm
statistics are fresh Variables of that trace (NNX refuses to update Variables
created in an outer trace)::

    def loss_fn(params, batch_stats, x):
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      logits = model(x, train=True)
      return loss(logits), nnx.state(model, nnx.BatchStat)

Models and their kwargs (besides ``input_shape``):
  mlp:  hidden=(256,)
  cnn:  widths=(32, 64, 128), batch_norm=False, hidden=None
  resnet8/14/20/32/44/56/110, resnet8x4, resnet32x4: none (see `resnet.CONFIGS`).
  vit:  patch_size=4, dim=64, num_layers=4, num_heads=4, mlp_dim=None (4·dim),
        distillation_token=False (DeiT's: a second head, see `kd_jax.models.vit`).

The language model ``gpt`` (`kd_jax.models.gpt`) takes token ids ``[B, T]`` and
returns ``[B, T, vocab_size]`` logits; it is created without ``num_classes``::

    model = models.create("gpt", vocab_size=20, max_len=64, num_layers=2,
                          num_heads=4, dim=64, rngs=nnx.Rngs(0))

The denoiser ``unet`` (`kd_jax.models.unet`, the diffusion task's) takes a noised batch,
its diffusion times ``[B]`` and optional labels and returns a prediction of the batch's
shape; ``num_classes`` (optional) makes it class-conditional::

    model = models.create("unet", widths=(32, 64), num_classes=10, rngs=nnx.Rngs(0))
    v = model(x_t, t, labels)                                      # [B, 28, 28, 1] f32

The sentence encoder ``bert`` (`kd_jax.models.bert.SentenceBert`) takes token ids
``[B, T]`` (0 = padding) and returns unit-norm sentence embeddings ``[B, D]``::

    model = models.create("bert", vocab_size=30522, dim=256, num_layers=4,
                          num_heads=4, mlp_dim=1024, rngs=nnx.Rngs(0))
"""

from collections.abc import Callable, Sequence
import functools
import inspect

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import bert
from kd_jax.models import cnn
from kd_jax.models import gpt
from kd_jax.models import mlp
from kd_jax.models import resnet
from kd_jax.models import unet
from kd_jax.models import vit

_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "mlp": mlp.MLP,
    "cnn": cnn.CNN,
    "gpt": gpt.GPT,
    "bert": bert.SentenceBert,
    "unet": unet.UNet,
    "vit": vit.ViT,
    **{
        name: functools.partial(resnet.ResNet, depth=depth, widths=widths,
                                name=name)
        for name, (depth, widths) in resnet.CONFIGS.items()
    },
}
NAMES: tuple[str, ...] = tuple(_BUILDERS)
# Language models: token ids in, [B, T, vocab_size] logits out; no num_classes.
SEQUENCE_MODELS = ("gpt",)
# Sentence encoders: token ids in (0 = padding), unit-norm embeddings [B, D] out.
ENCODER_MODELS = ("bert",)
# Denoisers: (x_t, t, labels) in, a prediction of x_t's shape out; num_classes is optional
# (None: unconditional).
DENOISER_MODELS = ("unet",)
IMAGE_MODELS: tuple[str, ...] = tuple(
    n for n in NAMES if n not in SEQUENCE_MODELS + ENCODER_MODELS + DENOISER_MODELS)

# Every model's output, as a feature a method may pair with (DeiT's distillation head learns
# the teacher's logits): engine.step.forward gives it under this name.
LOGITS_FEATURE = "logits"

# Arguments that `create` supplies itself, and those fixed by a registered name.
_RESERVED = {"num_classes", "rngs", "dtype"}
_FIXED_BY_NAME = {"depth", "widths", "name"}


def _model_kwargs(name: str) -> tuple[str, ...]:
  """The keyword arguments a user may pass to `create` for model `name`."""
  builder = _BUILDERS[name]
  target = builder.func if isinstance(builder, functools.partial) else builder
  params = inspect.signature(target.__init__).parameters
  fixed = _FIXED_BY_NAME if isinstance(builder, functools.partial) else set()
  return tuple(p for p in params if p not in _RESERVED | fixed | {"self"})


def create(name: str, *, rngs: nnx.Rngs, num_classes: int | None = None, dtype=jnp.float32,
           **kwargs) -> nnx.Module:
  """Builds a registered model.

  Args:
    name: one of `NAMES`.
    num_classes: number of output logits.
    rngs: initialisation RNGs, e.g. ``nnx.Rngs(0)``.
    dtype: computation dtype (``jnp.bfloat16`` for mixed precision); parameters
      stay float32 and logits are returned in float32.
    **kwargs: model-specific options; every model accepts ``input_shape=(H, W, C)``.

  Returns:
    An ``nnx.Module`` with ``__call__(x, *, train=False, return_features=False)``,
    ``feature_names`` and ``input_shape``.

  Raises:
    ValueError: unknown ``name`` (the message lists `NAMES`).
    TypeError: a kwarg the model does not take (the message names the model,
      the offending kwargs and the accepted ones).

  Example::

    >>> model = create("cnn", num_classes=10, rngs=nnx.Rngs(0), widths=(16, 32))
    >>> model.feature_names
    ('conv1', 'conv2', 'embedding')
  """
  if name not in _BUILDERS:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(NAMES)}")
  accepted = _model_kwargs(name)
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise TypeError(
        f"model {name!r} got unexpected keyword argument(s) {unknown}; it"
        f" accepts {list(accepted)}")
  token_models = SEQUENCE_MODELS + ENCODER_MODELS
  if name in DENOISER_MODELS:     # (its own check: num_classes may be None)
    return _BUILDERS[name](num_classes=num_classes, rngs=rngs, dtype=dtype, **kwargs)
  if name not in token_models and (not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  for key, value in kwargs.items():
    # Sizes (widths, kernels, strides, depths) are positive: a 0 would build a layer
    # with no units, which fails deep inside an initialiser instead of here.
    sizes = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, int) and not isinstance(v, bool) and v <= 0 for v in sizes):
      raise ValueError(f"model {name!r}: {key} must hold positive sizes, got {value!r}")
  if name in token_models:
    return _BUILDERS[name](rngs=rngs, dtype=dtype, **kwargs)
  return _BUILDERS[name](num_classes=num_classes, rngs=rngs, dtype=dtype,
                         **kwargs)


def feature_shapes(model: nnx.Module,
                   input_shape: Sequence[int] | None = None
                   ) -> dict[str, tuple[int, ...]]:
  """Shapes of every feature ``model`` returns, without running it.

  Traced abstractly with `jax.eval_shape` in eval mode, so nothing is computed
  and BatchNorm statistics are untouched.

  Args:
    model: a model from `create`.
    input_shape: full batch shape ``(B, H, W, C)``; default
      ``(1, *model.input_shape)``.

  Returns:
    ``{feature name: shape}`` for every name in ``model.feature_names``, e.g.
    ``{"conv1": (1, 28, 28, 32), ..., "embedding": (1, 128)}`` for the default cnn, and
    ``"logits"``: every model's output is a feature too (:data:`LOGITS_FEATURE`).
  """
  if input_shape is None:
    input_shape = (1, *model.input_shape)
  graphdef, state = nnx.split(model)

  def features(state, x):
    logits, feats = nnx.merge(graphdef, state)(x, return_features=True)
    return {**feats, LOGITS_FEATURE: logits}

  # Token models (a sentence encoder) take int32 ids.
  x = jax.ShapeDtypeStruct(tuple(input_shape), getattr(model, "input_dtype", jnp.float32))
  out = jax.eval_shape(features, state, x)
  return {k: tuple(v.shape) for k, v in out.items()}
