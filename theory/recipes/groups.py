r"""Exact expectations over groups of rollouts, and the group advantages of the estimators.

Group estimators (GRPO and the fusion recipes built on it) weight each sample by an advantage that
depends on the whole group. Their exact expected field needs the distribution of the group:

- for binary rewards, binomial sums over the number of successes (fusion-methods Rule 2 and the
  gate probabilities of Rule 5);
- in general, an enumeration of the multisets of the group's reward levels (with their
  multinomial weights), which is exact for std normalisation and gates alike.

References: fusion-methods.md Rules 1-5 (derived there and checked by enumeration).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._numerics import NEG_INF, masked_dot, safe_log
from ..instance import Instance
from ..objectives import rl_support

__all__ = [
    "MAX_GROUP_ENUMERATION", "InfeasibleExactField", "binom_pmf", "compositions",
    "reward_levels", "resolve_levels", "level_table", "enumerated_advantage",
    "enumerated_off_advantage", "binomial_group_coefficient", "binomial_off_advantage",
    "binomial_gate_probability", "sample_group_advantage", "success", "success_stats",
    "gated_mean_advantage", "value", "clip_weight", "fill_reward_levels",
]

MAX_GROUP_ENUMERATION = 50_000  # multisets of reward levels enumerated per (prompt, response)


class InfeasibleExactField(ValueError):
  """The exact group expectation would need more than MAX_GROUP_ENUMERATION multisets."""


def success(inst: Instance, threshold: float) -> jax.Array:
  return (inst.reward > threshold) & rl_support(inst)


def binom_pmf(n: int, p: jax.Array) -> jax.Array:
  """[..., n+1] Bin(k; n, p) for k = 0..n (0^0 = 1)."""
  p = jnp.asarray(p)
  lead = (1,) * p.ndim
  k = np.arange(n + 1, dtype=np.float64).reshape(lead + (n + 1,))
  log_c = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                    for i in range(n + 1)]).reshape(lead + (n + 1,))
  p = p[..., None]
  term_p = jnp.where(k > 0, k * safe_log(p), 0.0)
  term_q = jnp.where(n - k > 0, (n - k) * safe_log(1.0 - p), 0.0)
  return jnp.exp(log_c + term_p + term_q)


@functools.lru_cache(maxsize=None)
def compositions(total: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
  """All count vectors c ∈ N^parts with Σ c = total, and their log multinomial coefficients.

  Returns:
    (counts [K, parts] float64, log_coef [K]) with K = C(total + parts − 1, parts − 1).
  """
  if parts < 1 or total < 0:
    raise ValueError(f"compositions need parts >= 1 and total >= 0, got {parts}, {total}")
  rows = []
  for bars in itertools.combinations(range(total + parts - 1), parts - 1):
    edges = (-1,) + bars + (total + parts - 1,)
    rows.append([edges[i + 1] - edges[i] - 1 for i in range(parts)])
  counts = np.array(rows, dtype=np.float64).reshape(-1, parts)
  log_coef = math.lgamma(total + 1) - np.sum(
      np.vectorize(math.lgamma)(counts + 1.0), axis=1)
  return counts, np.asarray(log_coef, np.float64).reshape(-1)


def reward_levels(inst: Instance) -> int:
  """The largest number of distinct rewards on the RL support of one prompt (concrete input)."""
  r = np.asarray(inst.reward)
  s = np.asarray(rl_support(inst))
  r = r.reshape(-1, r.shape[-1])
  s = s.reshape(-1, s.shape[-1])
  return max(1, max(len(np.unique(row[m])) for row, m in zip(r, s)))


def resolve_levels(inst: Instance, levels: int | None) -> int:
  if levels is not None:
    return int(levels)
  try:
    return reward_levels(inst)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return int(inst.reward.shape[-1])


def level_table(total: int, parts: int):
  size = math.comb(total + parts - 1, parts - 1)
  if size > MAX_GROUP_ENUMERATION:
    raise InfeasibleExactField(
        f"exact group expectation needs {size} multisets ({total} samples over "
        f"{parts} reward levels), more than {MAX_GROUP_ENUMERATION}: use fewer distinct rewards, "
        "a smaller group, or no std normalisation (use_std=False)")
  counts, log_coef = compositions(total, parts)
  return jnp.asarray(counts), jnp.asarray(log_coef)


def _row_levels(r_row, support_row, p_row, m: int):
  """The first m distinct rewards of a row and the π-mass on each (0 for unused slots)."""
  same = (r_row[:, None] == r_row[None, :]) & support_row[:, None] & support_row[None, :]
  n = r_row.shape[0]
  earlier = jnp.asarray(np.tri(n, n, -1, dtype=bool))
  is_rep = support_row & ~jnp.any(same & earlier, axis=1)
  p_lvl = jnp.sum(jnp.where(same, p_row[None, :], 0.0), axis=1)
  order = jnp.argsort(~is_rep, stable=True)[:m]
  return r_row[order], jnp.where(is_rep[order], p_lvl[order], 0.0)


def _group_moments(own_r, own_succ, v, p, succ_lvl, extra, table, use_std, eps, gate):
  """E[Â⁺·gate], E[Â⁻·gate] for one sample of reward own_r in a group with the others drawn.

  The others are ``total`` i.i.d. on-policy draws over reward levels v with probabilities p
  (``table`` enumerates their multisets), plus fixed extra rewards (off-policy samples).
  Â = (own − mean)/(std + eps) (std unbiased, ddof = 1) or own − mean. The gate is
  gate[0] ≤ K ≤ gate[1] with K the on-policy successes (own_succ counts the sample itself).
  """
  counts, log_coef = table
  n = 1.0 + jnp.sum(counts[0]) + extra.shape[0]
  log_p = jnp.where(p > 0, safe_log(p), 0.0)[None, :]
  dead = (counts > 0) & (p <= 0)[None, :]
  logw = log_coef + jnp.sum(jnp.where(dead, NEG_INF, counts * log_p), axis=1)
  weights = jnp.exp(logw)
  dv = v - own_r
  de = extra - own_r
  dev = counts @ dv + jnp.sum(de)
  sq = counts @ (dv * dv) + jnp.sum(de * de)
  mean_minus_own = dev / n
  adv = -mean_minus_own
  if use_std:
    var = jnp.maximum((sq - n * mean_minus_own ** 2) / (n - 1.0), 0.0)
    adv = adv / (jnp.sqrt(var) + eps)
  k = counts @ succ_lvl + own_succ
  gated = (k >= gate[0]) & (k <= gate[1])
  pos = jnp.sum(jnp.where(gated, weights * jnp.maximum(adv, 0.0), 0.0))
  neg = jnp.sum(jnp.where(gated, weights * jnp.maximum(-adv, 0.0), 0.0))
  return pos, neg


def enumerated_advantage(inst, pi_old, n_others, m, use_std, eps, threshold,
                          gate=(0, 1 << 30), demo_in_group=False):
  """[X, Y] E[Â⁺ gate | y], E[Â⁻ gate | y] for an on-policy sample y (enumeration)."""
  table = level_table(n_others, m)
  support = rl_support(inst)
  gate = jnp.asarray(gate, pi_old.dtype)

  def row(r_row, s_row, p_row, d_row):
    v, p = _row_levels(r_row, s_row, p_row, m)
    succ_lvl = (v > threshold).astype(v.dtype)

    def own(r_y):
      succ = (r_y > threshold).astype(r_y.dtype)
      if not demo_in_group:
        return _group_moments(r_y, succ, v, p, succ_lvl, jnp.zeros((0,), r_y.dtype), table,
                              use_std, eps, gate)
      pos, neg = jax.vmap(lambda r_demo: _group_moments(
          r_y, succ, v, p, succ_lvl, r_demo[None], table, use_std, eps, gate))(r_row)
      dd = jnp.where(d_row > 0, d_row, 0.0)
      return jnp.sum(dd * pos), jnp.sum(dd * neg)
    return jax.vmap(own)(r_row)

  pos, neg = jax.vmap(row)(inst.reward, support, pi_old, inst.data)
  return jnp.where(support, pos, 0.0), jnp.where(support, neg, 0.0)


def enumerated_off_advantage(inst, pi_old, n_on, m, use_std, eps):
  """[X, Y] E[Â_off | y*] of a demonstration y* in a group with n_on on-policy draws."""
  table = level_table(n_on, m)
  support = rl_support(inst)
  gate = jnp.asarray((0, 1 << 30), pi_old.dtype)

  def row(r_row, s_row, p_row):
    v, p = _row_levels(r_row, s_row, p_row, m)
    zero = jnp.zeros_like(v)

    def own(r_y):
      pos, neg = _group_moments(r_y, 0.0, v, p, zero, jnp.zeros((0,), r_y.dtype), table,
                                use_std, eps, gate)
      return pos - neg
    return jax.vmap(own)(r_row)

  return jax.vmap(row)(inst.reward, support, pi_old)


def value(pi, r):
  """[X, 1] V = E_π r per prompt (kept as a column for broadcasting)."""
  return masked_dot(pi, r, keepdims=True)


def _binary_advantage(k_hi, n_on, own_hi, off_rewards, r_hi, r_lo, use_std, eps):
  rewards_on = k_hi * r_hi + (n_on - k_hi) * r_lo
  off = jnp.asarray(off_rewards, jnp.result_type(float))
  n = n_on + off.shape[0]
  own = jnp.where(own_hi, r_hi, r_lo)
  mean = (rewards_on + jnp.sum(off)) / n
  adv = own - mean
  if use_std:
    off_b = off.reshape((1,) * jnp.ndim(mean) + (-1,))
    off_sq = jnp.sum((off_b - jnp.expand_dims(mean, -1)) ** 2, axis=-1)
    sq = k_hi * (r_hi - mean) ** 2 + (n_on - k_hi) * (r_lo - mean) ** 2 + off_sq
    adv = adv / (jnp.sqrt(jnp.maximum(sq / (n - 1), 0.0)) + eps)
  return adv


def binomial_group_coefficient(p, group_size: int, use_std: bool = False, eps: float = 1e-6,
                               off_rewards=(), r_hi: float = 1.0, r_lo: float = 0.0):
  r"""c(p) of the group estimator for binary rewards: E[(1/G) Σ A_i ∇log π(y_i)] = c(p) F_π 1⁺.

  .. math:: c(p) = \sum_{j=0}^{G-1} \mathrm{Bin}(j; G-1, p)\,[a^+(j+1) - a^-(j)]

  a⁺(k), a⁻(k): advantage of a success / failure when k of the G on-policy samples succeed, with
  the fixed off-policy rewards in the group statistics. Without std and off-policy samples
  c = (r_hi − r_lo)(1 − 1/G) (Dr.GRPO).

  Args:
    p: [...] success probability under the sampling policy.
    group_size: G on-policy samples.
    use_std: divide by the unbiased group std plus eps.
    eps: std offset (verl: 1e-6).
    off_rewards: rewards of the off-policy samples in the group.
    r_hi, r_lo: the two reward values.

  Returns:
    [...] c(p).

  References: fusion-methods.md Rule 2 (derived, checked by enumeration).
  """
  j = jnp.arange(group_size, dtype=jnp.result_type(float))
  a_pos = _binary_advantage(j + 1, group_size, True, off_rewards, r_hi, r_lo, use_std, eps)
  a_neg = _binary_advantage(j, group_size, False, off_rewards, r_hi, r_lo, use_std, eps)
  pmf = binom_pmf(group_size - 1, p)
  return jnp.sum(pmf * jnp.reshape(a_pos - a_neg, (1,) * (pmf.ndim - 1) + (-1,)), axis=-1)


def binomial_off_advantage(p, group_size: int, off_reward: float = 1.0, use_std: bool = False,
                           eps: float = 1e-6, r_hi: float = 1.0, r_lo: float = 0.0):
  r"""E[A_off] = Σ_k Bin(k; G, p) a_off(k) for one off-policy sample among G on-policy ones.

  Without std and r_off = r_hi = 1, r_lo = 0 this is G (1 − p)/(G + 1).
  """
  k = jnp.arange(group_size + 1, dtype=jnp.result_type(float))
  n = group_size + 1
  mean = (k * r_hi + (group_size - k) * r_lo + off_reward) / n
  adv = off_reward - mean
  if use_std:
    sq = k * (r_hi - mean) ** 2 + (group_size - k) * (r_lo - mean) ** 2 + (off_reward - mean) ** 2
    adv = adv / (jnp.sqrt(sq / (n - 1)) + eps)
  pmf = binom_pmf(group_size, p)
  return jnp.sum(pmf * jnp.reshape(adv, (1,) * (pmf.ndim - 1) + (-1,)), axis=-1)


def binomial_gate_probability(p, n: int, low: int, high: int):
  """Pr(low ≤ K ≤ high) for K ~ Bin(n, p) (HPT's SFT weight: low = 0, high = γ; ReLIFT: 0, 0)."""
  pmf = binom_pmf(n, p)
  k = np.arange(n + 1).reshape((1,) * (pmf.ndim - 1) + (n + 1,))
  sel = (k >= low) & (k <= high)
  return jnp.sum(jnp.where(sel, pmf, 0.0), axis=-1)


def sample_group_advantage(rewards, use_std, eps):
  """[n] advantages of a sampled group (relative deviations, as in the exact enumeration)."""
  n = rewards.shape[-1]
  diff = rewards[None, :] - rewards[:, None]       # [i, j] = r_j − r_i
  mean_minus_own = jnp.sum(diff, axis=1) / n
  adv = -mean_minus_own
  if use_std:
    sq = jnp.sum(diff * diff, axis=1)
    var = jnp.maximum((sq - n * mean_minus_own ** 2) / (n - 1.0), 0.0)
    adv = adv / (jnp.sqrt(var) + eps)
  return adv


def clip_weight(a_pos, a_neg, ratio, clip_low, clip_high):
  """E[Â 1_stable | y], 1_stable = 0 iff (Â > 0, ratio > 1 + ε_hi) or (Â < 0, ratio < 1 − ε_lo)."""
  return (jnp.where(ratio > 1.0 + clip_high, 0.0, a_pos)
          - jnp.where(ratio < 1.0 - clip_low, 0.0, a_neg))


def success_stats(inst, pi_old, threshold):
  """p = π_old(Y⁺), V⁺ = E[r | success], V⁻ = E[r | failure] per prompt ([X] each)."""
  succ = success(inst, threshold)
  p = jnp.sum(jnp.where(succ, pi_old, 0.0), axis=-1)
  r_pos = jnp.sum(jnp.where(succ, pi_old * inst.reward, 0.0), axis=-1)
  r_neg = jnp.sum(jnp.where(~succ & (pi_old > 0), pi_old * inst.reward, 0.0), axis=-1)
  v_pos = jnp.where(p > 0, r_pos / jnp.where(p > 0, p, 1.0), 0.0)
  v_neg = jnp.where(p < 1, r_neg / jnp.where(p < 1, 1.0 - p, 1.0), 0.0)
  return p, v_pos, v_neg, succ


def gated_mean_advantage(inst, pi_old, n, gate_low, threshold):
  r"""[X, Y] E[Â 1{K ≥ gate_low} | y] without std, as a binomial sum over the others' successes.

  Â = r(y) − mean of the n group rewards; given j successes among the n − 1 others their reward
  sum has mean j V⁺ + (n − 1 − j) V⁻.
  """
  p, v_pos, v_neg, succ = success_stats(inst, pi_old, threshold)
  j = jnp.arange(n, dtype=pi_old.dtype)                           # others' successes 0..n-1
  pmf = binom_pmf(n - 1, p)                                        # [X, n]
  others = j[None, :] * v_pos[:, None] + (n - 1 - j)[None, :] * v_neg[:, None]  # [X, n]
  own = inst.reward[:, :, None]                                     # [X, Y, 1]
  adv = own - (own + others[:, None, :]) / n                       # [X, Y, n]
  k = j[None, None, :] + succ[:, :, None].astype(pi_old.dtype)
  return jnp.sum(jnp.where(k >= gate_low, pmf[:, None, :] * adv, 0.0), axis=-1)


def fill_reward_levels(inst: Instance, cfg):
  """A config with ``reward_levels`` read from ``inst`` when unset (the ``prepare`` hook of the
  recipes that enumerate groups: the level count fixes the compiled enumeration's shape)."""
  if cfg.reward_levels is None:
    return dataclasses.replace(cfg, reward_levels=resolve_levels(inst, None))
  return cfg
