r"""Policy-gradient distillation: the SFT student improves on its own samples, rewarded by
the verifier and the teacher (GRPO) or by the teacher alone (MiniLLM).

    python -m kd_jax.main --config=experiments/arithmetic/rl.py --workdir=runs/arithmetic_grpo
    python -m kd_jax.main --config=experiments/arithmetic/rl.py:minillm --workdir=runs/arithmetic_minillm
    python -m kd_jax.main --config=experiments/arithmetic/rl.py:smoke --workdir=/tmp/arl
    python -m kd_jax.main --config=experiments/arithmetic/rl.py:minillm_smoke --workdir=/tmp/aml

The data, teacher, student and seed of experiments/arithmetic/token_kd.py. The student
starts as the trained SFT student (``student_init="baseline"``), which is also the
frozen reference of the KL penalty. Every step it samples ``rl.k`` = 4 answers at
temperature 1 to each of 16 training prompts (64 rows, as every other method's step)
inside the jitted step, and the teacher scores them live:

* ``grpo`` (the default; Shao et al. 2024): reward = the verifier's verdict (1 if the
  answer checks, DeepSeek-R1's rule-based reward) + 0.1 × the teacher's mean token
  log-ratio log p_T − log q_S (MiniLLM's reverse-KL reward); advantages relative to the
  prompt's 4 samples; KL penalty 0.04 to the SFT student;
* ``:minillm`` (Gu et al. 2024): the reverse-KL policy gradient of the token log-ratio
  with the single-step regularisation, no verifier; ``:minillm_mix`` samples from
  0.2·teacher + 0.8·student (teacher-mixed sampling).

1,000 steps at peak learning rate ``rl.learning_rate`` = 1e-4 (the SFT start keeps
``train.learning_rate``). The step logs ``reward``, ``verifier_reward``,
``teacher_reward`` and ``kl_to_reference`` (``metrics.jsonl``): the reward curves.

Measured with ``time`` on the 2-core CPU (2026-11-27, seed 0, the teacher already
trained): the SFT start 59.4% → GRPO 62.0% greedy exact match, 1,000 steps in 86 s
(12 steps/s after compiling), 98 s in all. Over 5 seeds (rank_table.py, README) neither GRPO nor MiniLLM
beats SFT; both raise pass@1 of sampled answers over their start.
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")

ARGS = ("minillm", "minillm_mix", "smoke", "minillm_smoke")


def get_config(arg=None):
  if arg is not None and arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r}; valid: {', '.join(ARGS)}")
  c = token_kd.get_config()
  c.experiment = "arithmetic/rl"
  c.method = "grpo"
  c.baseline = True
  c.student_init = "baseline"
  c.rl = config_lib.rl_config()
  c.train.steps = 1000
  if arg in ("minillm", "minillm_smoke", "minillm_mix"):
    c.method = "minillm"
  if arg == "minillm_mix":
    c.rl.teacher_mix = 0.2
  if arg in ("smoke", "minillm_smoke"):
    c = token_kd.apply_arg(c, "smoke")
    c.train.steps = 8
  return c
