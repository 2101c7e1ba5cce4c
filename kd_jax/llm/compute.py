"""Counted compute of language-model training: the matmul FLOPs a phase executed.

A run's compute is counted from the shapes its steps ran on and
:func:`kd_jax.models.gpt.forward_flops` (matmuls only, masked attention included), not
measured: the forward of a training row costs F, its backward 2F (Kaplan et al. 2020),
and generating ``M`` tokens after a padded ``P``-token prompt runs P + M positions
against a KV cache of P + M (the prefill, then one position per step; rows that stopped
at EOS keep computing, since the shapes are fixed). A method counts its own step
(:attr:`kd_jax.methods.base.Method.step_flops`, given :class:`Shapes`); the
:func:`supervised_step` default is SFT's and token-level KD's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kd_jax.models import gpt


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What a language-model phase's steps run on.

  Attributes:
    student, teacher: the models' :attr:`kd_jax.models.gpt.GPT.config` (teacher None when
      the step does not run it).
    batch: rows per step (the phase's ``train.batch_size``).
    row: positions of a training row (``dataset.max_len - 1``: the inputs of its targets);
      a step that samples answers starts from whole rows (``row + 1`` positions).
    new_tokens: the generation budget per answer.
  """
  student: Mapping[str, Any]
  teacher: Mapping[str, Any] | None
  batch: int
  row: int
  new_tokens: int


def forward(model: Mapping[str, Any], sequences: int, positions: int) -> int:
  """FLOPs of ``sequences`` forward passes of ``positions`` positions (causal, dense)."""
  return sequences * gpt.forward_flops(model, positions)


def training(model: Mapping[str, Any], sequences: int, positions: int) -> int:
  """FLOPs of a forward and backward pass (3× the forward) over ``sequences`` rows."""
  return 3 * forward(model, sequences, positions)


def generation(model: Mapping[str, Any], sequences: int, prompt: int, new_tokens: int) -> int:
  """FLOPs of generating ``new_tokens`` after a ``prompt``-position prompt, ``sequences`` times
  (:func:`kd_jax.llm.generate.generate`'s prefill and decode steps over a cache of
  ``prompt + new_tokens``)."""
  length = prompt + new_tokens
  return sequences * gpt.forward_flops(model, length, length)


def supervised_step(shapes: Shapes) -> dict[str, int]:
  """One step on fixed rows: the student's forward and backward, the teacher's forward
  when it runs in the step."""
  return {"student": training(shapes.student, shapes.batch, shapes.row),
          "teacher": forward(shapes.teacher, shapes.batch, shapes.row) if shapes.teacher else 0}
