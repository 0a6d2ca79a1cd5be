r"""Closed forms of group estimators for binary rewards: binomial sums over the number of successes.

With two reward values, the group advantage of a sample depends only on its own reward and the
number K of successes among the group's on-policy samples, K ∼ Bin(G, p). These are the sums of
fusion-methods.md Rule 2 (the coefficient c(p) of the success gradient), the expected advantage of
an off-policy sample, and the gate probabilities of Rule 5.

The advantage is :func:`~.advantage.group_advantage` (a group of one sample has Â = r).

References: fusion-methods.md Rules 2 and 5 (derived there and checked by enumeration); verl
``verl/trainer/ppo/core_algos.py::compute_grpo_outcome_advantage``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._numerics import safe_log
from .advantage import group_advantage

__all__ = ["binom_pmf", "binomial_group_coefficient", "binomial_off_advantage",
           "binomial_gate_probability"]


def binom_pmf(n: int, p: jax.Array) -> jax.Array:
  r"""[..., n+1] Bin(k; n, p) = C(n, k) p^k (1 − p)^{n−k} for k = 0..n, in log space (0^0 = 1).

  Args:
    n: number of trials (≥ 0).
    p: [...] success probability.

  Returns:
    [..., n + 1] probabilities.

  Examples:
    >>> [round(float(v), 6) for v in binom_pmf(2, 0.5)]
    [0.25, 0.5, 0.25]
  """
  if n < 0:
    raise ValueError(f"binom_pmf needs n >= 0, got {n}")
  p = jnp.asarray(p)
  lead = (1,) * p.ndim
  k = np.arange(n + 1, dtype=np.float64).reshape(lead + (n + 1,))
  log_c = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                    for i in range(n + 1)]).reshape(lead + (n + 1,))
  p = p[..., None]
  term_p = jnp.where(k > 0, k * safe_log(p), 0.0)
  term_q = jnp.where(n - k > 0, (n - k) * safe_log(1.0 - p), 0.0)
  return jnp.exp(log_c + term_p + term_q)


def _binary_advantage(k_hi, n_on, own_hi, off_rewards, r_hi, r_lo, use_std, eps):
  """Â of a success (own_hi) or failure with k_hi on-policy successes (own included) and the
  fixed off-policy rewards."""
  off = jnp.asarray(off_rewards, jnp.result_type(float))
  own = jnp.where(own_hi, r_hi, r_lo)
  d_hi, d_lo, d_off = r_hi - own, r_lo - own, off - own
  dev_sum = k_hi * d_hi + (n_on - k_hi) * d_lo + jnp.sum(d_off)
  dev_sq = k_hi * d_hi ** 2 + (n_on - k_hi) * d_lo ** 2 + jnp.sum(d_off ** 2)
  return group_advantage(own, dev_sum, dev_sq, n_on + off.shape[0], use_std, eps)


def binomial_group_coefficient(p, group_size: int, use_std: bool = False, eps: float = 1e-6,
                               off_rewards=(), r_hi: float = 1.0, r_lo: float = 0.0):
  r"""c(p) of the group estimator for binary rewards: E[(1/G) Σ A_i ∇log π(y_i)] = c(p) F_π 1⁺.

  .. math:: c(p) = \sum_{j=0}^{G-1} \mathrm{Bin}(j; G-1, p)\,[a^+(j+1) - a^-(j)]

  a⁺(k), a⁻(k): advantage of a success / failure when k of the G on-policy samples succeed, with
  the fixed off-policy rewards in the group statistics. Without std and off-policy samples
  c = (r_hi − r_lo)(1 − 1/G) (Dr.GRPO) for G ≥ 2; a lone sample (G = 1, no off-policy rewards)
  has Â = r, so c = r_hi − r_lo (over 1 + ε with std).

  Args:
    p: [...] success probability under the sampling policy.
    group_size: G ≥ 1 on-policy samples.
    use_std: divide by the unbiased group std plus eps.
    eps: std offset (verl: 1e-6).
    off_rewards: rewards of the off-policy samples in the group.
    r_hi, r_lo: the two reward values.

  Returns:
    [...] c(p).

  Examples:
    >>> round(float(binomial_group_coefficient(0.3, 4)), 6)  # 1 − 1/G
    0.75
    >>> round(float(binomial_group_coefficient(0.3, 1)), 6)  # a group of one: Â = r
    1.0

  References: fusion-methods.md Rule 2 (derived, checked by enumeration).
  """
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  j = jnp.arange(group_size, dtype=jnp.result_type(float))
  a_pos = _binary_advantage(j + 1, group_size, True, off_rewards, r_hi, r_lo, use_std, eps)
  a_neg = _binary_advantage(j, group_size, False, off_rewards, r_hi, r_lo, use_std, eps)
  pmf = binom_pmf(group_size - 1, p)
  diff = jnp.broadcast_to(a_pos - a_neg, j.shape)
  return jnp.sum(pmf * jnp.reshape(diff, (1,) * (pmf.ndim - 1) + (-1,)), axis=-1)


def binomial_off_advantage(p, group_size: int, off_reward: float = 1.0, use_std: bool = False,
                           eps: float = 1e-6, r_hi: float = 1.0, r_lo: float = 0.0):
  r"""E[A_off] = Σ_k Bin(k; G, p) a_off(k) for one off-policy sample among G on-policy ones.

  Without std and r_off = r_hi = 1, r_lo = 0 this is G (1 − p)/(G + 1). With G = 0 the demo is
  alone in its group: A_off = r_off (over 1 + ε with std).

  Args:
    p: [...] success probability of the on-policy samples.
    group_size: G ≥ 0 on-policy samples.
    off_reward: the off-policy sample's reward.
    use_std, eps: std normalisation and offset.
    r_hi, r_lo: the two reward values of the on-policy samples.

  Returns:
    [...] E[A_off].

  Examples:
    >>> round(float(binomial_off_advantage(0.2, 7)), 6)  # 7 (1 − 0.2)/8
    0.7
  """
  if group_size < 0:
    raise ValueError(f"group_size must be >= 0, got {group_size}")
  k = jnp.arange(group_size + 1, dtype=jnp.result_type(float))
  d_hi, d_lo = r_hi - off_reward, r_lo - off_reward
  dev_sum = k * d_hi + (group_size - k) * d_lo
  dev_sq = k * d_hi ** 2 + (group_size - k) * d_lo ** 2
  adv = jnp.broadcast_to(
      group_advantage(off_reward, dev_sum, dev_sq, group_size + 1, use_std, eps), k.shape)
  pmf = binom_pmf(group_size, p)
  return jnp.sum(pmf * jnp.reshape(adv, (1,) * (pmf.ndim - 1) + (-1,)), axis=-1)


def binomial_gate_probability(p, n: int, low: int, high: int):
  r"""Pr(low ≤ K ≤ high) = Σ_{k=low}^{high} Bin(k; n, p) for K ∼ Bin(n, p).

  HPT's SFT weight is (low, high) = (0, γ); ReLIFT's all-failed probability (0, 0) = (1 − p)^n.

  Args:
    p: [...] success probability; n: trials; low, high: the gate (inclusive).

  Returns:
    [...] probability.

  Examples:
    >>> round(float(binomial_gate_probability(0.5, 2, 0, 0)), 6)
    0.25
  """
  pmf = binom_pmf(n, p)
  k = np.arange(n + 1).reshape((1,) * (pmf.ndim - 1) + (n + 1,))
  sel = (k >= low) & (k <= high)
  return jnp.sum(jnp.where(sel, pmf, 0.0), axis=-1)
