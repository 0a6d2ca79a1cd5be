r"""The group-relative advantage of GRPO-style estimators, with verl's rule for a group of one.

Â = (r − mean)/(std + ε) over the group (unbiased std, as ``torch.std``), or r − mean without
std. A group of one sample has mean 0 and std 1 (verl ``compute_grpo_outcome_advantage``), so
Â = r/(1 + ε) with std and Â = r without: every recipe is defined at group size 1.

References: verl ``verl/trainer/ppo/core_algos.py::compute_grpo_outcome_advantage``;
fusion-methods.md §3.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["group_advantage"]


def group_advantage(own, dev_sum, dev_sq, n: int, use_std: bool, eps: float):
  r"""Â of one sample of reward ``own`` in a group of n rewards r_i, from the deviations r_i − own.

  .. math:: \hat A = \frac{r - \bar r}{s + \varepsilon}, \quad \bar r - r = \frac{D_1}{n}, \quad
            s^2 = \frac{D_2 - D_1^2/n}{n - 1}, \quad D_k = \sum_i (r_i - r)^k

  (unbiased std, as ``torch.std``), or r − r̄ without std. Deviations from a member of the group
  keep the variance free of cancellation. A group of one has mean 0 and std 1 (verl's
  ``compute_grpo_outcome_advantage``): Â = r/(1 + ε), or r.

  Args:
    own: [...] the sample's reward r.
    dev_sum, dev_sq: [...] D_1 and D_2 over the group's n rewards (own included, contributing 0).
    n: group size (static, ≥ 1).
    use_std: divide by the group std plus eps.
    eps: std offset.

  Returns:
    [...] Â.

  Examples:
    >>> float(group_advantage(1.0, -1.0, 1.0, 2, False, 1e-6))  # rewards {1, 0}: 1 − 1/2
    0.5
    >>> float(group_advantage(1.0, 0.0, 0.0, 1, False, 1e-6))  # a group of one: Â = r
    1.0
  """
  if n < 1:
    raise ValueError(f"a group needs at least one sample, got {n}")
  own = jnp.asarray(own, jnp.result_type(float))
  if n == 1:
    return own / (1.0 + eps) if use_std else own
  mean_minus_own = dev_sum / n
  adv = -mean_minus_own
  if use_std:
    var = jnp.maximum((dev_sq - n * mean_minus_own ** 2) / (n - 1.0), 0.0)
    adv = adv / (jnp.sqrt(var) + eps)
  return adv
