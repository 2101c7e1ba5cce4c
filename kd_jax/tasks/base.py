"""What every task family returns to the experiment pipeline: :class:`Prepared`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Prepared:
  """One experiment's task, data and task-specific steps, as :mod:`kd_jax.run.pipeline` uses them.

  Attributes:
    task: the batch/evaluation object described above.
    train_data, test_data: the splits on the devices.
    student_train_data: the students' transfer set (``train_data`` unless the
      task leaves examples out).
    num_outputs: classes, or the vocabulary size: what a saved teacher must predict.
    build: ``build(spec, seed, role) -> module`` for a config's ``teacher``/``student``.
    evaluate_teacher: ``(graphdef, variables, batch_size) -> (report, reference)``:
      the teacher's ``results.json`` fields and what the students' reports compare
      against (its test logits, or the teacher itself).
    student_report: ``(fit, module, reference, batch_size) -> dict``: a trained
      student's task metrics (the engine adds timing and history).
    teacher_data: ``(teacher_module, teacher_identity, cache_dir) -> (data, stats)``:
      the students' training data written by the teacher (sequence-level KD), when
      the config asks for it (``student_data="transfer"``, or ``student_init="seqkd"``:
      then it is the data of the student's start); None otherwise.
    mesh: the device mesh the splits live on.
    prompts: the gold training prompts (:class:`kd_jax.tasks.lm.PromptSet`) for the
      methods that make their own training data from them (a method's
      ``training_task`` / ``student_data`` hooks); None for tasks without prompts.
    baseline_train_data: what the baseline (the from-scratch student, and the start of a
      ``student_init="baseline"`` one) trains on; None: ``student_train_data``.
    use_run_dirs: ``(workdir, cache_root) -> None``, called with the run's workdir and
      cache root (the directory that holds the teacher cache) before the teacher is
      evaluated, by a task that writes files of its own (the diffusion task's samples)
      or keeps caches there (its feature classifier); None for the others.
    compute_shapes: ``(rows_per_step, student_module, teacher_module | None) ->``
      :class:`kd_jax.llm.compute.Shapes` of a phase, for its counted FLOPs; None for
      tasks whose compute is not counted.
    teacher_test_data: the held-out split the teacher is evaluated on while it trains,
      when it reads other inputs than the students (another tokenizer's rows); None:
      ``test_data``. (``train_data`` is always the teacher's.)
    teacher_task: the task the teacher trains on when it is not the students' (their
      views mixed by mixup, which the teacher's own training does not use); None: ``task``.
  """
  task: Any
  train_data: Any
  student_train_data: Any
  test_data: Any
  num_outputs: int
  build: Callable
  evaluate_teacher: Callable
  student_report: Callable
  teacher_data: Callable | None = None
  mesh: Any = None
  prompts: Any = None
  compute_shapes: Callable | None = None
  baseline_train_data: Any = None
  use_run_dirs: Callable | None = None
  teacher_test_data: Any = None
  teacher_task: Any = None

  @property
  def baseline_data(self):
    """The baseline's training split (``baseline_train_data``, else the students')."""
    return self.student_train_data if self.baseline_train_data is None else self.baseline_train_data
