r"""Patient and consistent teaching (Beyer et al. 2022) and DeiT's distillation token (issue 27).

    python -m kd_jax.sweep --config=experiments/fashion_mnist/function_matching.py \
        --workdir=runs/function_matching
    python -m kd_jax.sweep --config=experiments/fashion_mnist/function_matching.py:vit \
        --workdir=runs/function_matching_vit
    python -m kd_jax.sweep --config=experiments/fashion_mnist/function_matching.py:smoke \
        --workdir=/tmp/fm_smoke                   # (:vit_smoke likewise)
    python -m kd_jax.patience_table --workdir=runs/function_matching   # table + plot

The default experiment's teacher (kd.py) and MLP student, every point (but ``kd-live``) at
budgets of 1×, 4×, 16× and 64× the default 20 epochs (``budget=...`` in the point names):

* ``kd-fixed``: kd (α = 0.5, T = 4) with crop and flip, the teacher on the un-augmented
  image (``teacher_fixed_views``: its outputs cached, what "precomputed logits" means);
* ``kd-consistent``: pure kd (α = 0) on one shared view per example per step, crop, flip
  and mixup (Beta(1, 1)), the teacher live in every step (function matching);
* ``scratch``: the student alone with the same augmentation (labels mixed alike);
* ``kd-live`` (1×, 4× and 16× only): ``kd-fixed`` with one thing changed, the teacher live
  on the student's own crop-and-flip view (consistent, no mixup). ``kd-fixed`` →
  ``kd-live`` is consistency alone; ``kd-live`` → ``kd-consistent`` adds mixup (and
  α = 0). Not at 64×, the costliest budget: it is the ablation of the three budgets
  where the other points were first measured;
* ``:vit``: ``deit_hard`` / ``deit_soft``, a ViT student (4×4 patches, 2 blocks, 64 wide)
  with DeiT's distillation token, and ``vit-scratch``, the ViT without it, alone, with
  the same views. (A sweep's points override fields, not whole ``student.kwargs``
  blocks, so the ViT students are a sweep of their own, with the same teacher.)

The teacher is trained once, without the students' mixing (only ``dataset.mixup`` and
``dataset.cutmix`` are the students'). The longest budgets are sized for a GPU: on the
2-core CPU one 20-epoch kd run takes about a minute, so 64× is an hour per run.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")

BUDGETS = (1, 4, 16, 64)            # × the default 20 epochs
VIT = dict(patch_size=4, dim=64, num_layers=2, num_heads=4)
VIEWS = "dataset.crop_padding=2; dataset.flip=True"
MLP_POINTS = {
    "kd-fixed": f"method=kd; {VIEWS}; teacher_fixed_views=True",
    "kd-consistent": f"method=kd; alpha=0.0; {VIEWS}; dataset.mixup=1.0",
    "scratch": f"method=none; {VIEWS}; dataset.mixup=1.0",
    "kd-live": f"method=kd; {VIEWS}",
}
POINT_BUDGETS = {"kd-live": (1, 4, 16)}   # a point's budgets where not all of BUDGETS
VIT_POINTS = {
    "deit_hard": f"method=deit_hard; {VIEWS}; alpha=0.5; feature_weight=0.5",
    "deit_soft": f"method=deit_soft; {VIEWS}; alpha=0.9; feature_weight=0.1; temperature=3",
    "vit-scratch": f"method=none; {VIEWS}; student.kwargs.distillation_token=False",
}
ARGS = ("smoke", "vit", "vit_smoke")


def get_config(arg=None):
  if arg and arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r}; valid: {', '.join(ARGS)}")
  smoke, vit = arg in ("smoke", "vit_smoke"), arg in ("vit", "vit_smoke")
  c = kd.get_config("smoke" if smoke else None)
  c.experiment = "fashion_mnist/function_matching" + ("_vit" if vit else "")
  c.baseline = False         # the from-scratch students are points of their own
  if vit:
    c.student.model = "vit"
    c.student.kwargs = dict(VIT, distillation_token=True)
    c.method = "deit_hard"
  points = []
  for budget in (1,) if smoke else BUDGETS:
    epochs = c.train.epochs * budget
    for name, overrides in (VIT_POINTS if vit else MLP_POINTS).items():
      if budget not in POINT_BUDGETS.get(name, BUDGETS):
        continue
      points.append(f"{name}-{budget}x: {overrides}; train.epochs={epochs}")
  c.sweep = dict(points=tuple(points), seeds=1 if smoke else 3)
  return c
