"""The devices a batch is split over: one CPU device per core, multi-host start, 1-D meshes."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh

__all__ = ["use_every_core", "maybe_initialize_distributed", "device_mesh"]


def use_every_core() -> None:
  """Gives the CPU platform one XLA device per core, so instance batches run in parallel.

  Must run before JAX starts its backends; does nothing when XLA_FLAGS already sets a device
  count. Accelerators are unaffected (the flag only concerns the host platform).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 1
  if cores > 1:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()


def maybe_initialize_distributed() -> bool:
  """Starts jax.distributed when launched multi-host (coordinator set in the environment)."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("NONDECOUPLING_DISTRIBUTED"):
    jax.distributed.initialize()
    return True
  return False


@functools.lru_cache(maxsize=None)
def device_mesh(axis: str, devices: tuple | None = None) -> Mesh:
  """A 1-D mesh named ``axis`` over ``devices`` (default: every device, every host's under
  jax.distributed)."""
  return Mesh(np.array(jax.devices() if devices is None else list(devices)), (axis,))
