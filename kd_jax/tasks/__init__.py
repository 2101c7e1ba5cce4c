"""Tasks: what a batch and an evaluation mean, for the one engine (kd_jax.step, kd_jax.loop).

A task object tells the engine, inside the jitted step and on the host:

* ``train_batch(data, index, mask, rng) -> (inputs, targets, loss_mask)`` — a
  training batch from the device-resident split ``data``: ``index`` ``[B]`` are the
  examples, ``mask`` ``[B]`` which rows are real (the ragged last batch is padded),
  ``rng`` the step's key (augmentation). ``loss_mask`` has the leading shape of
  the per-position losses (``[B]`` for classification, ``[B, T]`` for tokens) and
  includes ``mask``.
* ``eval_inputs(data, index)`` — the model's inputs for evaluation (no augmentation).
* ``train_metrics(logits, targets, loss_mask) -> dict`` — metrics logged each step.
* ``evaluator(graphdef, data, batch_size, mesh)`` — compiles what evaluation needs
  once and returns ``evaluate(variables) -> (metrics, outputs)``: the model on a
  whole held-out split; ``metrics`` holds the task's ``headline`` (a class
  attribute; ``higher_is_better`` defaults to True) and ``outputs`` is whatever
  the task's report needs.

``data`` is a pytree with a ``size`` and the optional cached teacher outputs
``teacher_logits`` / ``teacher_features`` (indexed by example, aligned with
``inputs``).

Tasks: :mod:`kd_jax.tasks.classification` (images → classes).
"""
