"""Orbax ``CheckpointManager`` wiring: periodic saves, resume from the latest, keep-last-N.

A checkpoint holds two items:

* ``state`` — the training pytree (step, parameters, optimiser state, ...),
  saved with ``StandardSave`` so sharded arrays are written by the processes
  that own their shards and restored onto the target shardings.
* ``meta``  — a small JSON dict (the best value of the task's headline metric so
  far, the epochs' eval history), so that a resumed run reports the same, and the
  identity of the run that wrote it (:func:`kd_jax.core.identity.identity_record`),
  so that a run never resumes another config's checkpoint.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs under ``directory``."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            # Saves are rare (each epoch by default) and small; synchronous saves
            # keep "the last good checkpoint" exact when a NaN stops the run.
            enable_async_checkpointing=False,
        ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def latest_meta(self) -> dict | None:
    """The ``meta`` item of the latest checkpoint alone (no state restored), or None."""
    step = self.latest_step()
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def restore(self, target_state, step: int | None = None):
    """Restores onto ``target_state``'s structure, shapes, dtypes and shardings.

    Returns ``(state, meta, step)``, or ``None`` when there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta), step

  def close(self) -> None:
    self._manager.close()
