r"""Sequence-level KD (Kim & Rush 2016; the DeepSeek-R1 recipe): the student fine-tuned on answers
the teacher wrote and a verifier accepted.

    python -m kd_jax.main --config=experiments/arithmetic/seqkd.py --workdir=runs/arithmetic_seqkd
    python -m kd_jax.main --config=experiments/arithmetic/seqkd.py:smoke --workdir=/tmp/aseqkd

The data, teacher, student, budget and seed of experiments/arithmetic/token_kd.py.
The cached teacher answers each of the 8,000 gold training prompts k = 4 times at
sampling temperature 0.7 (kd_jax/llm/transfer.py); the answers whose final result is
right are kept (rejection sampling), and the student is fine-tuned on them
(``method="none"``) for the same number of steps as the baseline trained on the
gold chains. ``results.json`` reports the transfer set (``transfer_set``: the
acceptance rate, the distinct accepted traces per prompt, generation tokens/s);
it is cached next to the teachers and reused by every later run with the same
teacher, prompts and settings. ``--config.method=kd`` distils token by token on
the transfer set (seqkd+kd).
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")


def get_config(arg=None):
  c = token_kd.get_config()
  c.experiment = "arithmetic/seqkd"
  c.method = "none"
  c.student_data = "transfer"
  c.transfer = config_lib.transfer_config(k=4, temperature=0.7)
  # The gold baseline's budget, 8 epochs of 8,000 chains in batches of 64, in steps: the
  # transfer set is larger (several accepted answers per prompt).
  c.train.steps = 1000
  if arg == "smoke":
    c.train.steps = 8                      # token_kd.py:smoke's one epoch of 512 chains
    # The smoke teacher (one epoch on 512 problems) is rarely right: keep its majority
    # answers so that the pipeline has data to run on.
    c.transfer.k = 2
    c.transfer.label_free = True
  return token_kd.apply_arg(c, arg)
