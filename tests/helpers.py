"""Shared test helpers: padded evaluation of raw (Hypothesis) instances with few compiles."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nondecoupling.theory.instance import Instance, make_instance
from nondecoupling.theory.objectives import policy_log_probs
from nondecoupling.verify.strategies import pad_raw

BUCKET = (3, 4)


def instance_of(raw: dict, bucket=BUCKET) -> Instance:
  """Instance from a raw dict of numpy arrays, padded (in numpy) to ``bucket`` unless None."""
  if bucket is None:
    return make_instance(raw["prompt_weights"], raw["data"], raw["reward"], raw["beta"],
                         reference=raw.get("reference"), dtype=jnp.float64)
  w, d, ref, r, beta, mask, _ = pad_raw(raw, None, bucket)
  return Instance(prompt_weights=jnp.asarray(w), data=jnp.asarray(d), reference=jnp.asarray(ref),
                  reward=jnp.asarray(r), beta=jnp.asarray(beta), response_mask=jnp.asarray(mask))


@functools.lru_cache(maxsize=None)
def jitted(fn):
  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _at_probe(fn):
  return jax.jit(lambda inst, theta: fn(inst, policy_log_probs(inst, theta)))


def at_probe(fn, inst: Instance, theta) -> object:
  """fn(inst, softmax policy of the (zero-padded) logits theta), jitted once per fn and shape."""
  full = np.zeros(inst.shape)
  theta = np.asarray(theta, np.float64)
  full[: theta.shape[0], : theta.shape[1]] = theta
  return _at_probe(fn)(inst, jnp.asarray(full))


def with_probe():
  """Strategy of (raw instance, probe logits) pairs."""
  from hypothesis import strategies as st

  from nondecoupling.verify.strategies import instance_strategy, probe_strategy_for
  return instance_strategy().flatmap(lambda raw: st.tuples(st.just(raw), probe_strategy_for(raw)))


def rms_error_by_calls(diffs, chunk: int) -> tuple[list[int], list[float]]:
  """(n, RMS over replicas of ‖mean of the first n calls − exact‖₂) for n = chunk · 2^j.

  Args:
    diffs: per level [replicas, chunks, ...]: each chunk's mean of ``chunk`` estimator calls
      minus the exact field.
    chunk: estimator calls per chunk.
  """
  reps, chunks = diffs[0].shape[:2]
  ns, errs, m = [], [], 1
  while m <= chunks:
    sq = sum(np.sum(d[:, :m].mean(axis=1).reshape(reps, -1) ** 2, axis=1) for d in diffs)
    ns.append(chunk * m)
    errs.append(float(np.sqrt(np.mean(sq))))
    m *= 2
  return ns, errs
