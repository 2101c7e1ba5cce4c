"""Progressive distillation (kd_jax/methods/progressive.py): its target, its rounds, its checks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.core import parallel
from kd_jax.methods import progressive as pd
from kd_jax.objectives import diffusion as df
from kd_jax.tasks import diffusion
from tests.conftest import needs_fashion_mnist
from tests.test_experiments import assert_refused_field, cli_load

SMOKE = "experiments/diffusion/progressive.py:smoke"


def _student(steps_per_round):
  model = models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16), embed_dim=32)
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(5), model.out.kernel.shape))
  return pd.RoundStudent(model, steps_per_round)


def _teacher_two_steps(model, z, t, n):
  """Two DDIM steps of ``model`` from z at t, by the formulas (x_hat, eps_hat, then the update)."""
  for now, later in ((t, t - 0.5 / n), (t - 0.5 / n, t - 1.0 / n)):
    alpha, sigma = (a[:, None, None, None] for a in df.alpha_sigma(now))
    v = model(z, now)
    x_hat, eps_hat = alpha * z - sigma * v, sigma * z + alpha * v
    alpha_s, sigma_s = (a[:, None, None, None] for a in df.alpha_sigma(later))
    z = alpha_s * x_hat + sigma_s * eps_hat
  return z


@needs_fashion_mnist
def test_one_student_step_to_the_target_lands_where_two_teacher_steps_did():
  c = cli_load(SMOKE)
  prepared = diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)
  task = pd._progressive_task(c, prepared)
  student = _student(task.steps_per_round)
  (z_t, t, _), target, _, metrics = task.train_batch(
      prepared.train_data, jnp.arange(8), jnp.ones(8, bool), jax.random.key(1),
      policy=nnx.split(student, nnx.Param, ...))
  n = float(metrics["student_steps"])
  assert n == c.progressive.start_steps // 2                  # round 0: 4 → 2 steps
  np.testing.assert_allclose(np.asarray(t) * n, np.rint(np.asarray(t) * n), atol=1e-5)
  want = _teacher_two_steps(student.model, z_t, t, n)
  alpha, sigma = (a[:, None, None, None] for a in df.alpha_sigma(t))
  x_tilde = alpha * z_t - sigma * target               # the target is a v
  eps_tilde = (z_t - alpha * x_tilde) / sigma
  alpha_s, sigma_s = (a[:, None, None, None] for a in df.alpha_sigma(t - 1.0 / n))
  np.testing.assert_allclose(alpha_s * x_tilde + sigma_s * eps_tilde, want, atol=2e-4)


def test_the_round_teacher_is_the_student_at_each_rounds_first_step():
  student = _student(steps_per_round=2)
  weights = lambda: nnx.to_pure_dict(nnx.state(student.model, nnx.Param))
  x, t = jnp.zeros((1, 28, 28, 1)), jnp.array([0.5])
  start = weights()
  student(x, t, train=True)                 # step 0: a round begins, the teacher is the start
  kernel = student.model.out.kernel
  kernel.set_value(kernel[...] + 1.0)      # as if the optimiser had moved the student
  np.testing.assert_array_equal(student.round_teacher_weights()["out"]["kernel"],
                                start["out"]["kernel"])
  student(x, t, train=True)                 # step 1: the same round, the same teacher
  np.testing.assert_array_equal(student.frozen.get_value()["out"]["kernel"], start["out"]["kernel"])
  # Step 2 begins the next round: its teacher is the student as it is now.
  np.testing.assert_array_equal(student.round_teacher_weights()["out"]["kernel"],
                                weights()["out"]["kernel"])
  assert int(student.steps[...]) == 2
  # The frozen weights are no nnx.Param: the optimiser never sees them.
  assert not any("frozen" in str(path) for path, _ in
                 jax.tree_util.tree_leaves_with_path(nnx.state(student, nnx.Param)))


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.progressive, "start_steps", 6), "progressive"),
    (lambda c: setattr(c.progressive, "final_steps", 4), "progressive"),
    (lambda c: setattr(c.train, "steps", 3), "train.steps"),
    (lambda c: setattr(c, "student_init", "scratch"), "student_init"),
])
def test_bad_progressive_settings_are_named(edit, field):
  assert_refused_field(cli_load(SMOKE), edit, field)


def test_progressive_needs_its_block():
  c = cli_load(SMOKE)
  del c.progressive
  from kd_jax.core.errors import ConfigError
  from kd_jax.run import validation
  with pytest.raises(ConfigError, match="progressive_config"):
    validation.validate(c)
  assert isinstance(cli_load(SMOKE).progressive, ml_collections.ConfigDict)



@needs_fashion_mnist
def test_a_resumed_progressive_run_is_bit_identical_mid_round(tmp_path, teacher_dir):
  # The round's frozen teacher and the step count live in the checkpointed state.
  import json
  from kd_jax.run import pipeline
  c = cli_load(SMOKE)
  c.train.steps, c.checkpoint.every_steps = 8, 1          # 2 rounds of 4 steps
  run = lambda name, **kw: pipeline.run_experiment(c, str(tmp_path / name),
                                                   teacher_dir=teacher_dir,
                                                   show_progress=False, **kw)
  straight = run("straight")
  with pytest.raises(KeyboardInterrupt):
    run("resumed", stop_at_step=6)                      # in the second round
  resumed = run("resumed")
  assert resumed["student"]["resumed_from_step"] > 4
  logs = lambda name: [json.loads(line) for line in
                       open(tmp_path / name / "student" / "metrics.jsonl")]
  assert logs("resumed") == logs("straight")
  # (the "round" each logged step trained in is among the logs: a lost step count shows)
  untimed = lambda entry: {k: v for k, v in entry.items() if k != "ms_per_image"}
  assert resumed["student"]["test_loss"] == straight["student"]["test_loss"]
  for steps in (4, 1):
    assert (untimed(resumed["student"][f"steps_{steps}"])
            == untimed(straight["student"][f"steps_{steps}"]))


def test_the_learning_rate_schedule_restarts_with_every_round():
  from kd_jax import methods
  from kd_jax.engine import optim
  c = cli_load(SMOKE)            # 4 steps, two rounds (4 → 2 → 1)
  with c.unlocked():
    c.train.lr_schedule, c.train.learning_rate = "cosine", 1e-3
  schedule = optim.learning_rate_schedule(methods.student_train_config(c), c.train.steps)
  # Each round is a cosine of two steps from the peak: 1e-3, then cos²(π/4)·1e-3 = 0.5e-3.
  np.testing.assert_allclose([float(schedule(s)) for s in range(4)], [1e-3, 5e-4, 1e-3, 5e-4],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="schedule_cycles=2 must divide the phase's 5 steps"):
    optim.learning_rate_schedule(methods.student_train_config(c), 5)
  # A method that sets nothing keeps one schedule over the phase.
  plain = optim.learning_rate_schedule(c.train, 4)
  np.testing.assert_allclose(float(plain(2)), 5e-4, rtol=1e-6)
