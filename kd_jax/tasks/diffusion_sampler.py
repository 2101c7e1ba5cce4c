"""Sampling a denoiser: DDIM with any number of steps, and the ancestral sampler (DESIGN §8).

    images = sample(graphdef, state, noise, steps=4)                  # DDIM, [B, H, W, C]
    images = sample(graphdef, state, noise, steps=256, labels=y, guidance=1.5)
    images = sample(graphdef, state, noise, steps=256, ddim=False, rng=key)   # ancestral

``graphdef, state`` is a split denoiser (``nnx.split(model)``: ``model(z, t, labels)``
predicts v or x, ``parameterization``); ``noise`` ``[B, H, W, C]`` is the sampler's start
z_1 (standard normal). The sampler visits the uniform time grid 1 = t_0 > … > t_steps = 0
(:func:`kd_jax.objectives.diffusion.time_grid`) and updates z by the formulas of
:mod:`kd_jax.objectives.diffusion`; its output is the last ``x_hat``, clipped to [−1, 1]
(``clip``: also each step's x_hat, as Salimans & Ho's samplers do for images in [−1, 1]).

Classifier-free guidance (Ho & Salimans 2022) with weight w mixes the conditional and
the null-label ("no label") predictions, ``(1 + w)·cond − w·uncond``; the mix is applied
to the network's prediction, which is linear in ε for a fixed z and t, so it is the
paper's mix of ε. w = 0 makes one forward per step, w ≠ 0 two.

Each (shape, steps, sampler, guidance on/off) compiles once: the loop over the steps is a
``lax.fori_loop`` inside one jitted function, the weight a traced value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.core import tracing
from kd_jax.objectives import diffusion


def guided_prediction(model, z, t, labels, guidance, guided: bool):
  """``model``'s prediction at ``z`` and time ``t`` (a scalar), mixed with the null label's
  by classifier-free guidance weight ``guidance`` when ``guided`` (see the module docstring);
  the samplers' and the exported one-step generator's (kd_jax/export/student.py)."""
  # (ones · t and full_like, not jnp.full of z's batch: the exported generator's batch is
  # symbolic, and jnp.full of a symbolic shape does not trace)
  t = jnp.ones((z.shape[0],), jnp.float32) * t
  if not guided:
    return model(z, t, labels)
  null = jnp.full_like(labels, model.num_classes)
  return (1.0 + guidance) * model(z, t, labels) - guidance * model(z, t, null)


@functools.partial(jax.jit, static_argnames=("steps", "ddim", "parameterization", "guided",
                                             "clip"))
@tracing.count_traces
def _sample(graphdef, state, noise, labels, guidance, rng, *, steps: int, ddim: bool,
            parameterization: str, guided: bool, clip: bool):
  model = nnx.merge(graphdef, state)
  times = diffusion.time_grid(steps)

  def x_hat_at(z, t):
    prediction = guided_prediction(model, z, t, labels, guidance, guided)
    x_hat, _ = diffusion.to_x_eps(prediction, z, t, parameterization=parameterization)
    return jnp.clip(x_hat, -1.0, 1.0) if clip else x_hat

  def update(i, z):
    t, s = times[i], times[i + 1]
    x_hat = x_hat_at(z, t)
    if not ddim:
      return diffusion.ancestral_step(x_hat, z, t, s, jax.random.fold_in(rng, i))
    alpha, sigma = diffusion.alpha_sigma(t)
    # eps_hat of the (clipped) x_hat, so that the step stays on the line through z and x_hat.
    return diffusion.ddim_step(x_hat, (z - alpha * x_hat) / sigma, s)

  z = jax.lax.fori_loop(0, steps - 1, update, noise.astype(jnp.float32))
  # The last step lands at t = 0, where z is x_hat itself.
  return x_hat_at(z, times[steps - 1])


def sample(graphdef, state, noise, *, steps: int, labels=None, guidance: float = 0.0,
           ddim: bool = True, rng=None, parameterization: str = "v", clip: bool = True):
  """Images ``[B, H, W, C]`` in [−1, 1] (``clip``) drawn from ``noise`` in ``steps`` steps.

  Raises:
    ValueError: ``steps`` < 1, an unknown ``parameterization``, guidance without labels
      or with an unconditional model, or the ancestral sampler without ``rng``.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if parameterization not in diffusion.PREDICTIONS:
    raise ValueError(f"parameterization must be one of {diffusion.PREDICTIONS}, got "
                     f"{parameterization!r}")
  guided = guidance != 0.0
  if guided and (labels is None or getattr(nnx.merge(graphdef, state), "num_classes",
                                           None) is None):
    raise ValueError("guidance != 0 needs labels and a class-conditional model")
  if not ddim and rng is None:
    raise ValueError("the ancestral sampler (ddim=False) needs rng")
  return _sample(graphdef, state, noise, labels, jnp.float32(guidance),
                 jax.random.key(0) if rng is None else rng, steps=steps, ddim=ddim,
                 parameterization=parameterization, guided=guided, clip=clip)
