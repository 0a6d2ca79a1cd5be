"""Random instance families (numpy, seeded), padded to fixed buckets, for the sweep of `verify`.

Every family returns a batched :class:`Instance` of one padded shape [B, X, Y] plus a probe policy
(log-probabilities [B, X, Y]) on which the policy-dependent statements are evaluated. Sizes vary
inside the bucket (weight-0 prompts, masked responses), so each statement compiles once per bucket.

Families:
  dense         full-support data, reference = data, uniform rewards in [-1, 1]
  sparse        data on a random support; reference = data or a dense base policy
  tied          rewards constant on supp d_x (the equality case of Theorem 3.1)
  gold          gold labels: one-hot data, reward +1 on the gold label and -1 elsewhere
  reference     a reference ρ ≠ d (dense), where exact RL can lower the SFT loss (D1)
  extreme_beta  β log-uniform in [1e-3, 1e3] with |r| up to 1, so |r|/β reaches 1e3
  near_tie      rewards on supp d_x equal up to a relative 1e-8 (C₁ ≈ 1e-17 β⁻², which must still
                be computed to full relative precision); reference = data or a dense base policy
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from ..theory.instance import Instance
from .host_arrays import on_device

__all__ = ["FAMILIES", "BUCKET", "sample_family", "sample_all", "probe_policies", "normalise"]

BUCKET = (8, 8)  # [X, Y] every generated instance is padded to


def _sizes(rng, n, bucket, min_y=2):
  nx = rng.integers(1, bucket[0] + 1, size=n)
  ny = rng.integers(min_y, bucket[1] + 1, size=n)
  return nx, ny


def _frame(rng, n, bucket):
  """Random sizes of n instances in the bucket: (nx [n], ny [n], real-response mask [n, Y],
  padded shape (n, X, Y))."""
  nx, ny = _sizes(rng, n, bucket)
  return nx, ny, _masks(nx, ny, bucket)[1], (n,) + bucket


def _masks(nx, ny, bucket):
  xs = np.arange(bucket[0])[None, :] < nx[:, None]          # [B, X]
  ys = np.arange(bucket[1])[None, :] < ny[:, None]          # [B, Y]
  return xs, ys


def normalise(a, axis=-1):
  s = a.sum(axis=axis, keepdims=True)
  return a / np.where(s > 0, s, 1.0)


def _positive_rows(rng, shape, ys, low=0.05):
  """Rows of strictly positive masses on the real responses (bounded away from 0)."""
  a = rng.uniform(low, 1.0, size=shape) * ys[:, None, :]
  return normalise(a)


def _random_support(rng, shape, ys):
  """A random non-empty support inside the real responses, per row."""
  keep = (rng.uniform(size=shape) < 0.5) & ys[:, None, :]
  # Guarantee one response per row: a random real response.
  ny = ys.sum(-1)
  pick = (rng.uniform(size=shape[:2]) * ny[:, None]).astype(int)
  keep[np.arange(shape[0])[:, None], np.arange(shape[1])[None, :], pick] = True
  return keep


def _assemble(rng, nx, ny, bucket, data, reference, reward, beta) -> Instance:
  xs, ys = _masks(nx, ny, bucket)
  n = nx.shape[0]
  w = rng.uniform(0.1, 1.0, size=(n, bucket[0])) * xs
  w = normalise(w)
  uniform = normalise(np.broadcast_to(ys[:, None, :], data.shape).astype(float))
  pad_row = ~xs[:, :, None]
  data = np.where(pad_row, uniform, data)
  reference = np.where(pad_row, uniform, reference)
  reward = np.where(xs[:, :, None] & ys[:, None, :], reward, 0.0)
  mask = np.broadcast_to(ys[:, None, :], data.shape).copy()
  f = lambda a: on_device(a, np.float64)
  return Instance(prompt_weights=f(w), data=f(data), reference=f(reference), reward=f(reward),
                  beta=f(beta), response_mask=on_device(mask, np.bool_))


def _log_uniform(rng, lo, hi, n):
  return np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))


def dense(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  d = _positive_rows(rng, shape, ys)
  r = rng.uniform(-1, 1, size=shape)
  return _assemble(rng, nx, ny, bucket, d, d, r, _log_uniform(rng, 0.1, 10.0, n))


def sparse(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  d = normalise(_positive_rows(rng, shape, ys) * _random_support(rng, shape, ys))
  base = _positive_rows(rng, shape, ys)
  use_base = rng.uniform(size=(n, 1, 1)) < 0.5
  ref = np.where(use_base, base, d)
  r = rng.uniform(-1, 1, size=shape)
  return _assemble(rng, nx, ny, bucket, d, ref, r, _log_uniform(rng, 0.1, 10.0, n))


def tied(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  d = normalise(_positive_rows(rng, shape, ys) * _random_support(rng, shape, ys))
  level = rng.uniform(-1, 1, size=(n, bucket[0], 1))
  off = rng.uniform(-1, 1, size=shape)
  whole_row = rng.uniform(size=(n, 1, 1)) < 0.5
  r = np.where(whole_row | (d > 0), level, off)  # constant on supp d (or on the whole row)
  return _assemble(rng, nx, ny, bucket, d, d, r, _log_uniform(rng, 0.1, 10.0, n))


def gold(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  label = (rng.uniform(size=shape[:2]) * ny[:, None]).astype(int)
  d = np.zeros(shape)
  d[np.arange(n)[:, None], np.arange(bucket[0])[None, :], label] = 1.0
  r = np.where(d > 0, 1.0, -1.0)
  base = _positive_rows(rng, shape, ys)
  return _assemble(rng, nx, ny, bucket, d, base, r, _log_uniform(rng, 0.05, 5.0, n))


def reference(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  d = _positive_rows(rng, shape, ys)
  base = _positive_rows(rng, shape, ys)
  r = rng.uniform(-1, 1, size=shape)
  return _assemble(rng, nx, ny, bucket, d, base, r, _log_uniform(rng, 0.01, 100.0, n))


def extreme_beta(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  d = _positive_rows(rng, shape, ys)
  base = _positive_rows(rng, shape, ys)
  ref = np.where(rng.uniform(size=(n, 1, 1)) < 0.5, base, d)
  r = rng.uniform(-1, 1, size=shape)
  return _assemble(rng, nx, ny, bucket, d, ref, r, _log_uniform(rng, 1e-3, 1e3, n))


def near_tie(rng, n, bucket=BUCKET):
  nx, ny, ys, shape = _frame(rng, n, bucket)
  d = normalise(_positive_rows(rng, shape, ys) * _random_support(rng, shape, ys))
  level = rng.uniform(-1, 1, size=(n, bucket[0], 1))
  rel = 10.0 ** rng.uniform(-12, -8, size=(n, 1, 1))  # relative spread on supp d
  tie = level * (1.0 + rel * rng.uniform(-1, 1, size=shape))
  off = rng.uniform(-1, 1, size=shape)
  whole_row = rng.uniform(size=(n, 1, 1)) < 0.5
  r = np.where(whole_row | (d > 0), tie, off)
  base = _positive_rows(rng, shape, ys)
  ref = np.where(rng.uniform(size=(n, 1, 1)) < 0.5, base, d)
  return _assemble(rng, nx, ny, bucket, d, ref, r, _log_uniform(rng, 0.01, 100.0, n))


FAMILIES: dict[str, Callable] = {
    "dense": dense, "sparse": sparse, "tied": tied, "gold": gold, "reference": reference,
    "extreme_beta": extreme_beta, "near_tie": near_tie,
}


def probe_policies(rng, inst: Instance, frac_data: float = 0.25) -> jnp.ndarray:
  """[B, X, Y] probe log-policies: random softmax on the RL support, or d itself (a fraction)."""
  support = np.asarray(inst.response_mask) & (np.asarray(inst.reference) > 0)
  logits = rng.normal(0.0, 2.0, size=support.shape)
  logits = np.where(support, logits, -np.inf)
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  d = np.asarray(inst.data)
  with np.errstate(divide="ignore"):
    log_d = np.where(d > 0, np.log(np.where(d > 0, d, 1.0)), -np.inf)
  use_d = rng.uniform(size=(support.shape[0], 1, 1)) < frac_data
  return on_device(np.where(use_d, log_d, logp))


def sample_family(name: str, n: int, seed: int, bucket=BUCKET):
  """(instances [n, X, Y], probes [n, X, Y]) of one family, deterministic in (name, seed)."""
  rng = np.random.default_rng([seed, sorted(FAMILIES).index(name)])
  inst = FAMILIES[name](rng, n, bucket)
  return inst, probe_policies(rng, inst)


def sample_all(n_total: int, seed: int, bucket=BUCKET) -> list[tuple[str, Instance, jnp.ndarray]]:
  """n_total instances split evenly over the families: [(family, instances, probes), ...]."""
  names = list(FAMILIES)
  per = [n_total // len(names) + (i < n_total % len(names)) for i in range(len(names))]
  return [(name, *sample_family(name, k, seed, bucket)) for name, k in zip(names, per) if k > 0]
