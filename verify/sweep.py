"""Batched evaluation of statements: jit + vmap, sharded over every local device (and host).

The instance axis is split over a 1-D mesh of all devices (``jax.devices()``, which spans every
host when the program was started under ``jax.distributed``). Each process builds the same
global batch deterministically and contributes the shards it holds; results are gathered back.
A batch whose size is not a multiple of the device count is padded by repeating its last
instance and the padding is dropped from the results.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..theory.verdict import Verdict
from .devices import device_mesh
from .exported_programs import exported_jit
from .stored_programs import program_name

__all__ = ["AXIS", "instance_mesh", "shard_batch", "evaluate_batch", "batched_function", "pad_leading"]

AXIS = "instances"


def instance_mesh() -> Mesh:
  """A 1-D mesh over all devices along the instance axis."""
  return device_mesh(AXIS)


def pad_leading(a: np.ndarray, n: int) -> np.ndarray:
  """``a`` with its last row repeated up to ``n`` rows along the leading axis."""
  if a.shape[0] == n:
    return a
  reps = np.repeat(a[-1:], n - a.shape[0], axis=0)
  return np.concatenate([a, reps], axis=0)


def shard_batch(tree: Any, mesh: Mesh | None = None, size: int = 0) -> tuple[Any, int]:
  """Places a batched pytree on the mesh, split along the leading axis, padded to a multiple of
  the devices and to at least ``size`` rows (batches of one shape share one compiled program).

  Returns:
    (sharded pytree, original batch size).
  """
  mesh = mesh or instance_mesh()
  leaves = jax.tree.leaves(tree)
  n = leaves[0].shape[0]
  k = mesh.devices.size
  padded = -(-max(n, size) // k) * k
  sharding = NamedSharding(mesh, PartitionSpec(AXIS))

  def place(a):
    full = pad_leading(np.asarray(a), padded)
    return jax.make_array_from_callback(full.shape, sharding, lambda idx: full[idx])

  return jax.tree.map(place, tree), n


def _gather(a) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return np.asarray(a)


@functools.lru_cache(maxsize=None)
def batched_function(fn):
  """jit(vmap(fn)) over (instance, probe), cached per function so each shape compiles once; for a
  module-level function of this package its lowered programs are kept between processes
  (:func:`~.exported_programs.exported_jit`)."""
  name = program_name(fn)
  if name is not None:
    return exported_jit(jax.vmap(fn), f"{name}[vmap]")
  return jax.jit(jax.vmap(fn))


def evaluate_batch(fn, instances, probes, mesh: Mesh | None = None, size: int = 0) -> Verdict:
  """Evaluates an unbatched ``fn(instance, probe) -> Verdict`` on a batch, sharded.

  Args:
    fn: statement function (hashable; compiled once per shape and cached).
    instances: batched Instance [B, X, Y].
    probes: [B, X, Y] probe log-policies.
    mesh: device mesh (default: all devices).
    size: evaluate at least this many rows (padding repeats the last instance; the caller passes
      the largest of its batches, so every batch compiles to one program).

  Returns:
    Verdict of numpy arrays [B].
  """
  (inst_s, probe_s), n = shard_batch((instances, probes), mesh, size)
  out = batched_function(fn)(inst_s, probe_s)
  return Verdict(*(_gather(jnp.broadcast_to(v, (out.margin.shape[0],)))[:n] for v in out))
