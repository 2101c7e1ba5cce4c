r"""Images per second of the diffusion samplers at 1, 2, 4 and 256 steps, batch 1 and 64.

    python benchmarks/diffusion.py [--quick] [--tag T]

The denoiser is the diffusion teacher's UNet (experiments/diffusion/teacher.py; every
distilled student is a copy of it, so a one-step student draws as fast as the teacher's
one-step DDIM), with random weights: sampling time does not depend on the weights. Each
sampler of kd_jax/tasks/diffusion_sampler.py — DDIM, and the ancestral sampler for
reference — is compiled once per (batch, steps) and timed as the median of repeats after
a warm-up. Target (issue 24): the 1-step student draws ≥ 100× more images per second than
the 256-step teacher at the same batch; the script prints the ratio and whether it is met.
Writes ``benchmarks/results/diffusion[-T].json``.
"""

from __future__ import annotations

import argparse

import common
import jax
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import models
from kd_jax.tasks import diffusion_sampler

STEPS = (1, 2, 4, 256)
BATCHES = (1, 64)
TARGET_SPEEDUP = 100.0


def teacher_spec() -> dict:
  """The UNet kwargs of the diffusion experiments' teacher (and of its students)."""
  config = config_lib.load_sibling(f"{common.ROOT}/experiments/diffusion/table.py",
                                   "teacher").get_config()
  return dict(config.teacher.kwargs)


def images_per_second(graphdef, state, *, batch: int, steps: int, ddim: bool,
                      repeats: int) -> float:
  noise = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
  rng = None if ddim else jax.random.key(1)

  def run():
    return diffusion_sampler.sample(graphdef, state, noise, steps=steps, ddim=ddim, rng=rng)

  return batch / common.median_seconds(run, repeats=repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  parser.add_argument("--tag", default="", help="results file suffix: diffusion-<tag>.json")
  args = parser.parse_args()
  spec = teacher_spec()
  graphdef, state = nnx.split(models.create("unet", rngs=nnx.Rngs(0), **spec))
  rows = []
  for sampler, ddim in (("ddim", True), ("ancestral", False)):
    for batch in BATCHES:
      for steps in STEPS:
        # The 256-step runs take seconds each: fewer repeats keep the script in minutes.
        repeats = 1 if steps == 256 else (3 if args.quick else 10)
        rate = images_per_second(graphdef, state, batch=batch, steps=steps, ddim=ddim,
                                 repeats=repeats)
        rows.append({"sampler": sampler, "batch": batch, "steps": steps,
                     "images_per_second": rate, "ms_per_image": 1000.0 / rate})
        print(f"{sampler:>9} batch {batch:>2} steps {steps:>3}: {rate:10.1f} images/s "
              f"({1000.0 / rate:8.2f} ms/image)", flush=True)
  rate = {(r["sampler"], r["batch"], r["steps"]): r["images_per_second"] for r in rows}
  speedups = {batch: rate["ddim", batch, 1] / rate["ddim", batch, 256] for batch in BATCHES}
  for batch, speedup in speedups.items():
    verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
    print(f"1-step student vs 256-step teacher (DDIM), batch {batch}: {speedup:.0f}x "
          f"(target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
  common.write_results("diffusion", {
      "unet": spec, "rows": rows,
      "speedup_1_vs_256": {str(b): s for b, s in speedups.items()},
      "target_speedup": TARGET_SPEEDUP}, args.tag)


if __name__ == "__main__":
  main()
