"""A student's token rows with its teacher's view of the same text: next-token prediction
when teacher and student have different tokenizers (DESIGN §9).

:class:`AlignedTokenData` is a :class:`kd_jax.tasks.lm.TokenData` (the student's rows,
which every task reads as usual) plus, per row, the teacher's tokens of the same text and
where the two tokenizations align (:func:`kd_jax.data.token_alignment.teacher_views`).
:class:`AlignedNextTokens` is the student's task for the cross-tokenizer methods: the
step asks it for the teacher's outputs (:meth:`AlignedNextTokens.teacher_outputs`), and it
runs the teacher on the teacher's tokens and moves its logits onto the student's positions,
either by byte offsets (``alignment="bytes"``: the teacher position whose text ends where
the student's does) or by sequence order (``"order"``: position j of both, as ULD does).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.core import parallel
from kd_jax.engine import feeding, step
from kd_jax.engine.splits import device_split
from kd_jax.objectives import cross_tokenizer as ct
from kd_jax.tasks import lm

ALIGNMENTS = ("bytes", "order")


@device_split
class AlignedTokenData(lm.TokenData):
  """The student's rows (``tokens``, ``loss_mask``) and the teacher's view of each.

  ``teacher_tokens`` int32 ``[N, T_t]`` and ``teacher_lengths`` ``[N]``: the teacher's
  tokens of each row's text; ``teacher_index`` int32 ``[N, L-1]``: the teacher position
  that ends where student position j does (−1: none); ``exact`` bool ``[N, L-1]``: the
  next token is the same string on both sides there; ``vocab_map`` int32 ``[V_t]``: the
  student id of each teacher token's byte string (−1: none).
  """
  teacher_tokens: jax.Array
  teacher_lengths: jax.Array
  teacher_index: jax.Array
  exact: jax.Array
  vocab_map: jax.Array


def aligned_token_data(tokens, lengths, views, vocab_map, mesh) -> AlignedTokenData:
  """An :class:`AlignedTokenData` on the devices (replicated) from packed rows (every real
  token after the first a target) and :func:`~kd_jax.data.token_alignment.teacher_views`."""
  arrays = (np.asarray(tokens, np.int32), lm.packed_mask(tokens, lengths), *views,
            np.asarray(vocab_map, np.int32))
  return AlignedTokenData(*parallel.put_replicated(arrays, mesh))


@dataclasses.dataclass(frozen=True, eq=False)
class AlignedNextTokens(lm.NextTokens):
  """Next-token prediction of the student's rows with the teacher reading its own tokens.

  Args:
    alignment: how teacher positions are matched to the student's (:data:`ALIGNMENTS`).
  """
  alignment: str = "bytes"
  # The teacher's outputs are gathered per step from its own rows: not the cache's layout.
  teacher_outputs_cacheable: ClassVar[bool] = False

  def teacher_outputs(self, data: AlignedTokenData, index, run_teacher):
    """``(ct.AlignedTeacher, {})``: the teacher run on its view of the rows ``index``
    (``run_teacher(tokens) -> (logits, features)``), its logits at the positions aligned
    with the student's ``[B, L-1, V_t]``."""
    logits, _ = run_teacher(data.teacher_tokens[index])
    positions = data.loss_mask.shape[1]
    if self.alignment == "bytes":
      at = data.teacher_index[index]
      exact = data.exact[index]
    else:   # position j of both, while the teacher's view has a token there
      at = jnp.broadcast_to(jnp.arange(positions), (index.shape[0], positions))
      at = jnp.where(at < data.teacher_lengths[index][:, None], at, -1)
      exact = jnp.zeros(at.shape, bool)
    aligned = (at >= 0) & (at < logits.shape[1])
    gathered = jnp.take_along_axis(logits, jnp.clip(at, 0, logits.shape[1] - 1)[..., None],
                                   axis=1)
    return ct.AlignedTeacher(gathered, aligned, exact, data.vocab_map), {}

  def with_sorted_teacher(self, data: AlignedTokenData, teacher, *, temperature: float,
                          top_k: int, batch_size: int, mesh) -> AlignedTokenData:
    """``data`` with ``teacher_logits`` the teacher's side of ULD for every row, computed
    once (:func:`kd_jax.objectives.cross_tokenizer.sorted_teacher`, a
    :class:`~kd_jax.objectives.cross_tokenizer.SortedTeacher` ``[N, L-1, k]`` on the
    devices): the rows are fixed, so the step's teacher forward pass, softmax and
    ``lax.top_k`` over the teacher's vocabulary need not be redone every epoch. Batched
    as the engine's teacher cache is (:func:`kd_jax.engine.step.predict_all`: the batch
    split over the data devices, every row once).

    Args:
      teacher: the frozen teacher (:class:`kd_jax.engine.step.Teacher`).
      temperature: the (constant) T of both softmaxes.
      top_k: ULD's truncation (> 0): ``k = min(top_k, V_t)`` probabilities are kept.
      batch_size: rows per teacher pass (rounded to the data devices).
    """
    def sorted_rows(params, model_state, data, index):
      aligned, _ = self.teacher_outputs(data, index,
                                        lambda x: teacher((params, model_state), x))
      width = min(top_k, aligned.logits.shape[-1])
      return ct.sorted_teacher(aligned.logits, aligned.aligned, temperature=temperature,
                               width=width), {}

    predict = jax.jit(sorted_rows, in_shardings=(None, None, parallel.replicated(mesh),
                                                 parallel.batch_sharding(mesh)),
                      out_shardings=parallel.replicated(mesh))
    rows, _ = step.predict_all(predict, teacher.variables, data,
                               feeding.eval_batch_size(batch_size, data.size, mesh), mesh)
    return dataclasses.replace(data, teacher_logits=parallel.put_replicated(rows, mesh))
