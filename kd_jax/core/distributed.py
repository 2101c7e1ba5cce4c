"""Multi-host start-up on JAX's own runtime (``jax.distributed``).

``initialize_from_flags()`` calls ``jax.distributed.initialize`` when

* ``--coordinator_address``, ``--num_processes`` and ``--process_id`` are given
  (any cluster, or several processes on one machine), or
* the environment describes a multi-process job that JAX detects by itself:
  a TPU VM pod slice (``TPU_WORKER_HOSTNAMES`` with several hosts), a SLURM job
  with several tasks (``SLURM_NTASKS`` > 1, started with ``srun``), an Open MPI
  job (``OMPI_COMM_WORLD_SIZE`` > 1, started with ``mpirun``), or
  ``JAX_COORDINATOR_ADDRESS``.

Otherwise it does nothing and the run is single-process. It must run before
anything touches a JAX device (``kd_jax.main`` and ``kd_jax.sweep`` call it
first). Every process then runs the same program: the mesh spans all devices
of all processes (:mod:`kd_jax.core.parallel`), checkpoints are saved and restored
by all of them (orbax coordinates), and only process 0 writes results, logs and
plots. On CPU, processes exchange collectives through gloo; GPUs and TPUs use
NCCL and ICI. On SLURM with GPUs, JAX gives each task the GPU numbered by its
``SLURM_LOCALID``: start one task per GPU.

Example (two processes on one machine, e.g. to try multi-host on a laptop)::

    python -m kd_jax.main ... --coordinator_address=127.0.0.1:12345 \
        --num_processes=2 --process_id=0 &
    python -m kd_jax.main ... --coordinator_address=127.0.0.1:12345 \
        --num_processes=2 --process_id=1
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

_COORDINATOR = "coordinator_address"
_NUM_PROCESSES = "num_processes"
_PROCESS_ID = "process_id"


def define_flags(flag_values=flags.FLAGS) -> None:
  """Defines the multi-host flags (idempotent: main and sweep share them)."""
  if _COORDINATOR in flag_values:
    return
  flags.DEFINE_string(_COORDINATOR, None, "host:port of process 0's coordinator service.",
                      flag_values=flag_values)
  flags.DEFINE_integer(_NUM_PROCESSES, None, "Number of processes in the job.",
                       flag_values=flag_values)
  flags.DEFINE_integer(_PROCESS_ID, None, "This process's index in [0, num_processes).",
                       flag_values=flag_values)


def cluster_detected(environ=os.environ) -> bool:
  """Whether the environment describes a multi-process job JAX can initialise itself."""
  tpu_hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
  return (len([h for h in tpu_hosts.split(",") if h]) > 1
          or int(environ.get("SLURM_NTASKS", "1") or 1) > 1
          or int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
          or bool(environ.get("JAX_COORDINATOR_ADDRESS")))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts ``jax.distributed`` if asked or detected; returns whether it did.

  Raises:
    ValueError: when only some of the three explicit settings are given.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id must be given "
                       "together")
    _use_gloo_on_cpu()
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif cluster_detected():
    _use_gloo_on_cpu()
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def initialize_from_flags(flag_values=flags.FLAGS) -> bool:
  """:func:`initialize` with the ``--coordinator_address/--num_processes/--process_id`` flags."""
  return initialize(flag_values[_COORDINATOR].value, flag_values[_NUM_PROCESSES].value,
                    flag_values[_PROCESS_ID].value)


def _use_gloo_on_cpu() -> None:
  # CPU devices of different processes need a collectives backend; GPUs and TPUs
  # bring their own (NCCL, ICI).
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator_plugin():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _has_accelerator_plugin() -> bool:
  import importlib.util
  return any(importlib.util.find_spec(name) is not None
             for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))
