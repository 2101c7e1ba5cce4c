r"""Sentence-encoder throughput, teacher against its distilled students, in one quiet process.

    python benchmarks/encoder_throughput.py --workdir=runs/minilm_table [--rounds 3]

Each run's ``results.json`` has its own speedup (teacher and student timed in that
run, minutes apart); here all models are timed in one process, round-robin over
``--rounds`` rounds, so that the same machine state serves every model. The models:
the teacher (all-MiniLM-L6-v2) and the trained student of seed 0 of every point of
the sweep in ``--workdir`` (experiments/minilm/table.py). The workload is the
run's: the first 512 (batch 64) and 128 (batch 1) held-out sentences, raw text,
WordPiece tokenisation included (``kd_jax.tasks.embedding.encoding_cost``). Prints
the table and writes ``benchmarks/results/encoder_throughput.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform

import numpy as np
import tokenizers

from kd_jax.run import pipeline as experiment
from kd_jax.models import hf_checkpoint
from kd_jax.tasks import embedding

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished experiments/minilm/table.py sweep")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  runs = sorted(glob.glob(os.path.join(args.workdir, "runs", "*", "seed0")))
  if not runs:
    raise SystemExit(f"no runs/<point>/seed0 in {args.workdir}")
  models, config, prepared = {}, None, None
  for run in runs:
    config, prepared, models[os.path.basename(os.path.dirname(run))] = (
        experiment.load_trained_student(run))
  models = {"teacher": prepared.build(config.teacher, 0, "teacher"), **models}
  checkpoint = hf_checkpoint.resolve(config.teacher.checkpoint)
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
  from kd_jax.data import sentences  # noqa: PLC0415
  _, test = sentences.load()
  timings = {name: [] for name in models}
  for _ in range(args.rounds):
    for name, model in models.items():
      timings[name].append(embedding.encoding_cost(model, tokenizer, test.texts,
                                                   config.dataset.max_len))
  rows = {}
  for name, rounds in timings.items():
    rows[name] = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
    rows[name]["params"] = int(models[name].num_params())
  teacher = rows["teacher"]
  print(f"{'model':<12}{'params':>12}{'sent/s b64':>12}{'×':>7}{'sent/s b1':>12}{'×':>7}"
        f"{'ms b1':>8}")
  for name, row in rows.items():
    row["speedup_b64"] = row["sentences_per_second_b64"] / teacher["sentences_per_second_b64"]
    row["speedup_b1"] = row["sentences_per_second_b1"] / teacher["sentences_per_second_b1"]
    print(f"{name:<12}{row['params']:>12,}{row['sentences_per_second_b64']:>12.0f}"
          f"{row['speedup_b64']:>7.2f}{row['sentences_per_second_b1']:>12.0f}"
          f"{row['speedup_b1']:>7.2f}{row['latency_ms_b1']:>8.2f}")
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "encoder_throughput.json"), "w") as f:
    json.dump({"workdir": args.workdir, "rounds": args.rounds, "machine": platform.processor()
               or platform.machine(), "cpus": os.cpu_count(), "models": rows}, f, indent=2)


if __name__ == "__main__":
  main()
