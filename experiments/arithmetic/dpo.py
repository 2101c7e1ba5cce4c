r"""Rank-based distillation (DPO, Rafailov et al. 2023): the SFT student learns from
preference pairs over its own answers, ranked by the verifier and the teacher.

    python -m kd_jax.main --config=experiments/arithmetic/dpo.py --workdir=runs/arithmetic_dpo
    python -m kd_jax.main --config=experiments/arithmetic/dpo.py:smoke --workdir=/tmp/adpo
    python -m kd_jax.main --config=experiments/arithmetic/dpo.py:teacher --workdir=runs/arithmetic_dpo_t

The data, teacher, student and seed of experiments/arithmetic/token_kd.py. The
student starts as the trained SFT student (``student_init="baseline"``, which is also
the frozen reference), samples ``dpo.k`` = 4 answers per training prompt at
temperature 1, and the samples are ranked by reward = verifier (1 if the answer
checks) + 0.1 × the teacher's mean token log-likelihood: the best is chosen, the
worst rejected, prompts whose samples tie are left out (kd_jax/methods/preference.py).
DPO (β = ``dpo.beta``, peak learning rate ``dpo.learning_rate`` = 1e-4; the SFT start
keeps ``train.learning_rate``) then trains on the pairs for 1,000 steps of 64 pairs.
``:teacher`` makes teacher-versus-student pairs instead (DPO on them is DPKD, Li et
al. 2024): a verified teacher answer chosen, the student's own rejected. ``results.json`` has the pairs'
statistics under ``preference_pairs``.
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")


def get_config(arg=None):
  c = token_kd.get_config()
  c.experiment = "arithmetic/dpo"
  c.method = "dpo"
  c.baseline = True
  c.student_init = "baseline"
  c.dpo = config_lib.dpo_config(beta=0.1, pairs="ranked", k=4, temperature=1.0,
                                teacher_weight=0.1, learning_rate=1e-4)
  c.transfer = config_lib.transfer_config(k=4, temperature=0.7)   # the teacher's, for :teacher
  c.train.steps = 1000
  if arg == "teacher":
    c.dpo.pairs = "teacher"
    return c
  c = token_kd.apply_arg(c, arg)
  if arg == "smoke":
    c.train.steps = 8
    c.dpo.k = 2
    c.dpo.correct_chosen = False       # the smoke SFT start is never right: rank by the teacher
    c.transfer.k = 2
    c.transfer.label_free = True       # the smoke teacher is rarely right
  return c
