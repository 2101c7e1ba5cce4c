"""The diffusion teacher's report, computed once per teacher and sample settings (DESIGN §5.6).

Every run of a diffusion experiment reports the teacher beside its student: DDIM samples
at each of ``dataset.sample_steps`` (256 steps of a UNet over the fixed noise draws cost
minutes on a CPU, more than many a student's training), their quality, and the samples at
the most steps, which the student's ``mse_to_teacher`` compares against. The same teacher
from the same noise gives the same report, so it is computed once and cached in
``<cache root>/diffusion_teacher_reports/<key>/`` (``report.json``, ``reference.npy`` and
``samples/``, which every later run copies into its own ``teacher/samples``). The key is a
digest of the teacher's weights (:func:`kd_jax.engine.teacher_cache.fingerprint`), the
settings the samples depend on (the noise, steps, guidance, precision, and the device
kind, since the report holds timings) and the code fingerprint, so another teacher, other
noise, other numerics or other code computes anew. A report read from the cache says so
(``report_cached``); its ``ms_per_image`` are those measured when it was made, on the
same kind of device. Each writer fills a temporary directory of its own and renames it
into place; a finished entry is never removed, so runs that share the cache and compute
the same entry at once each end with a complete one. The diffusion task runs single-host:
one process writes the entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import jax
import numpy as np

from kd_jax.core import files
from kd_jax.core import fingerprint as source_code
from kd_jax.core import identity as identity_lib
from kd_jax.engine import teacher_cache

SUBDIR = "diffusion_teacher_reports"
REPORT_FILE, REFERENCE_FILE, SAMPLES_DIR = "report.json", "reference.npy", "samples"


def key(variables, settings: dict) -> str:
  """The cache key of a teacher's report: its weights, ``settings`` and the code."""
  return identity_lib.digest({"teacher": teacher_cache.fingerprint(variables),
                              "settings": settings, "code": source_code.fingerprint()})


def obtain(cache_root: str, report_key: str, compute: Callable, phase_dir: str | None
           ) -> tuple[dict, np.ndarray]:
  """``(report, reference)`` from the cache, else from ``compute(directory)``, which writes
  its samples under ``directory``/samples and is then cached; either way the samples end
  up in ``phase_dir``/samples (when given)."""
  directory = os.path.join(cache_root, SUBDIR, report_key)
  report = files.read_json(os.path.join(directory, REPORT_FILE))
  cached = report is not None
  if not cached:
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{report_key}.", suffix=".tmp", dir=os.path.dirname(directory))
    try:
      report, reference = compute(tmp)
      np.save(os.path.join(tmp, REFERENCE_FILE), np.asarray(reference, np.float32))
      files.write_json(os.path.join(tmp, REPORT_FILE), report, default=float)
      try:
        os.rename(tmp, directory)          # complete or absent: never half-written
      except OSError:                      # another run finished the same entry first
        if not os.path.exists(os.path.join(directory, REPORT_FILE)):
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    report = files.read_json(os.path.join(directory, REPORT_FILE))   # whichever run's it is
  reference = np.load(os.path.join(directory, REFERENCE_FILE))
  if phase_dir and jax.process_index() == 0:
    shutil.copytree(os.path.join(directory, SAMPLES_DIR), os.path.join(phase_dir, SAMPLES_DIR),
                    dirs_exist_ok=True)
  return {**report, "report_cached": cached}, reference
