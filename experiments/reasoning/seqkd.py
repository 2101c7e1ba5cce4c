r"""Sequence-level KD on the reasoning testbed (the DeepSeek-R1 recipe): the student fine-tuned
on the traces the teacher wrote for unlabelled prompts and the verifier accepted.

    python -m kd_jax.main --config=experiments/reasoning/seqkd.py --workdir=runs/reasoning_seqkd
    python -m kd_jax.main --config=experiments/reasoning/seqkd.py:smoke --workdir=/tmp/rseqkd

The data, teacher, student and budget of experiments/reasoning/sft.py. The cached
teacher answers each of the 16,000 pool prompts k = 4 times at sampling temperature
0.7; the traces whose final answer the verifier accepts are kept, and the student is
trained on them from scratch (``method="none"``) for the same steps as ``sft-answers``
(experiments/reasoning/sft.py, the run to compare with). The transfer-set size is
``dataset.pool_examples`` (prompts) times ``transfer.k``; ``--config.method=kd`` distils
token by token on the traces. In experiments/reasoning/r1_table.py the ``seqkd-*`` rows
start from the gold-trained student instead (the table's shared base).
"""

from kd_jax import config as config_lib

sft = config_lib.load_sibling(__file__, "sft")


def get_config(arg=None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  c = sft.base(arg)
  c.experiment = "reasoning/seqkd"
  c.student_data = "transfer"
  c.transfer = config_lib.transfer_config(k=4, temperature=0.7)
  if arg == "smoke":
    # The smoke teacher (8 steps) is never right: keep its majority answers so that the
    # pipeline has data to run on.
    c.transfer.k = 2
    c.transfer.label_free = True
  return c
