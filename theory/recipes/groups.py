r"""Exact expectations over groups of rollouts, and the group advantages of the estimators.

Group estimators (GRPO and the fusion recipes built on it) weight each sample by an advantage that
depends on the whole group. Their exact expected field needs the distribution of the group: an
enumeration of the multisets of the group's reward levels (with their multinomial weights), which
is exact for std normalisation, gates and clip masks alike; without std the mean advantage has a
closed form. Binary-reward closed forms are in :mod:`.binomial`.

The advantage of a sample is :func:`~.advantage.group_advantage` (verl's rule: a group of one has
mean 0 and std 1, so Â = r).

References: fusion-methods.md Rules 1-5 (derived there and checked by enumeration); verl
``compute_grpo_outcome_advantage``.
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
from .advantage import group_advantage
from .base import ConfigError
from .binomial import binom_pmf

__all__ = [
    "MAX_GROUP_ENUMERATION", "InfeasibleExactField", "compositions", "reward_levels",
    "resolve_levels", "level_table", "enumerated_advantage", "enumerated_off_advantage",
    "sample_group_advantage", "group_levels", "mean_group_advantage", "success", "success_stats",
    "gated_mean_advantage", "value", "clip_weight", "fill_reward_levels", "read_levels",
    "level_values", "DENSE_LEVELS",
]

MAX_GROUP_ENUMERATION = 50_000  # multisets of reward levels enumerated per (prompt, own level)
DENSE_LEVELS = 16  # up to this many levels are handled in one fused pass; more one at a time


class InfeasibleExactField(ValueError):
  """The exact group expectation would need more than MAX_GROUP_ENUMERATION multisets."""


def success(inst: Instance, threshold: float) -> jax.Array:
  """[X, Y] bool: r > threshold on the RL support (the verifier's "correct").

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> success(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0), 0.0).tolist()
    [[False, True]]
  """
  return (inst.reward > threshold) & rl_support(inst)


@functools.lru_cache(maxsize=None)
def compositions(total: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
  r"""All count vectors c ∈ ℕ^parts with Σ c = total, and their log multinomial coefficients
  log(total! / Π c_i!).

  Returns:
    (counts [K, parts] float64, log_coef [K]) with K = C(total + parts − 1, parts − 1).

  Examples:
    >>> counts, log_coef = compositions(2, 2)
    >>> counts.tolist(), [round(float(v), 6) for v in np.exp(log_coef)]
    ([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]], [1.0, 2.0, 1.0])
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
  """The largest number of distinct rewards on the RL support of one prompt (concrete input).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> reward_levels(make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 1.0]], 1.0))
    2
  """
  r = np.asarray(inst.reward)
  s = np.asarray(rl_support(inst))
  r = r.reshape(-1, r.shape[-1])
  s = s.reshape(-1, s.shape[-1])
  return max(1, max(len(np.unique(row[m])) for row, m in zip(r, s)))


def resolve_levels(inst: Instance, levels: int | None) -> int:
  """``levels`` if given, else :func:`reward_levels` (or the row width when ``inst`` is traced).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> resolve_levels(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0), None)
    2
  """
  if levels is not None:
    return int(levels)
  try:
    return reward_levels(inst)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return int(inst.reward.shape[-1])


def level_table(total: int, parts: int):
  """(counts, log_coef) of :func:`compositions` as arrays, refused beyond MAX_GROUP_ENUMERATION.

  Examples:
    >>> level_table(3, 2)[0].shape
    (4, 2)
  """
  size = math.comb(total + parts - 1, parts - 1)
  if size > MAX_GROUP_ENUMERATION:
    raise InfeasibleExactField(
        f"exact group expectation needs {size} multisets ({total} samples over "
        f"{parts} reward levels), more than {MAX_GROUP_ENUMERATION}: use fewer distinct rewards, "
        "a smaller group, or no std normalisation (use_std=False)")
  counts, log_coef = compositions(total, parts)
  return jnp.asarray(counts), jnp.asarray(log_coef)


def group_levels(r_row, key_row, support_row, m: int):
  """Group the n entries of one row into its distinct (reward, key) levels: O(n m), no sort.

  Level j is the smallest (reward, key) pair among the entries not yet in a level (two masked
  minima and one comparison pass per level; XLA's sort on CPU costs more than the m passes for
  the level counts the exact enumerations admit).

  Args:
    r_row: [n] rewards; key_row: [n] a second key (a length; zeros for rewards alone).
    support_row: [n] bool, the entries that count (the rest are in no level).
    m: static number of levels returned (≥ the row's distinct keys on its support).

  Returns:
    (level_of [n] int (0 off the support), level reward [m], level key [m], used [m] bool).
    Levels are in increasing (reward, key) order; unused levels have reward 0 and key 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> lv, r, _, used = group_levels(jnp.array([1.0, 0.0, 1.0, 5.0]), jnp.zeros(4),
    ...                               jnp.array([True, True, True, False]), 3)
    >>> lv.tolist(), r.tolist(), used.tolist()
    ([1, 0, 1, 0], [0.0, 1.0, 0.0], [True, True, False])
  """
  key = key_row.astype(r_row.dtype)

  def level(j, carry):
    level_of, left, lvl_r, lvl_key, used = carry
    r_min = jnp.min(jnp.where(left, r_row, jnp.inf))
    at_r = left & (r_row == r_min)
    key_min = jnp.min(jnp.where(at_r, key, jnp.inf))
    here = at_r & (key == key_min)
    found = jnp.any(here)  # levels are found in order: once one is empty, so are the rest
    return (jnp.where(here, j, level_of), left & ~here,
            lvl_r.at[j].set(jnp.where(found, r_min, 0.0)),
            lvl_key.at[j].set(jnp.where(found, key_min, 0.0)), used.at[j].set(found))

  init = (jnp.zeros(r_row.shape, jnp.int32), support_row, jnp.zeros((m,), r_row.dtype),
          jnp.zeros((m,), r_row.dtype), jnp.zeros((m,), bool))
  level_of, _, lvl_r, lvl_key, used = jax.lax.fori_loop(0, m, level, init)
  return level_of, lvl_r, lvl_key.astype(key_row.dtype), used


def _row_levels(r_row, support_row, p_row, m: int):
  """(level of each entry [n], the m distinct rewards on the support [m], π-mass on each [m],
  whether each level is used [m])."""
  level_of, v, _, used = group_levels(r_row, jnp.zeros_like(r_row), support_row, m)
  on = jnp.where(support_row, p_row, 0.0)
  # Masked sums, not a segment sum (XLA:CPU's scatter): one fused pass over [m, n] for a few
  # levels, one level at a time for many.
  mass = lambda j: jnp.sum(jnp.where(level_of == j, on, 0.0))
  levels = jnp.arange(m)
  p = jax.vmap(mass)(levels) if m <= DENSE_LEVELS else jax.lax.map(mass, levels)
  return level_of, v, jnp.where(used, p, 0.0), used


def level_values(level_of, values):
  """[n] values[level_of[i]] for a few levels as one elementwise pass (XLA:CPU's gather costs more).

  Args:
    level_of: [n] int level indices in [0, m); values: [m].

  Examples:
    >>> import jax.numpy as jnp
    >>> level_values(jnp.array([1, 0, 1]), jnp.array([10.0, 20.0])).tolist()
    [20.0, 10.0, 20.0]
  """
  m = values.shape[-1]
  if m > DENSE_LEVELS:
    return values[level_of]
  out = jnp.zeros(level_of.shape, values.dtype)
  for j in range(m):
    out = out + jnp.where(level_of == j, values[j], 0.0)
  return out


def read_levels(r, v, used, values):
  """[X, Y] values[x, l] of the level l whose reward v[x, l] is r[x, y] (0 where none is).

  Args:
    r: [X, Y] rewards; v: [X, m] level rewards (distinct where ``used``); used: [X, m] bool;
    values: [X, m] a value per level.

  A response matches one used level at most, so the value is the sum over the levels of the
  matches: for a few levels unrolled into one elementwise pass (an argmax and a gather, or a
  [X, Y, m] table summed over its short last axis, cost XLA:CPU several times more: SRFT's
  field on the k = 8, T = 5 tree).

  Examples:
    >>> import jax.numpy as jnp
    >>> read_levels(jnp.array([[1.0, 0.0, 2.0]]), jnp.array([[0.0, 1.0]]),
    ...             jnp.array([[True, True]]), jnp.array([[10.0, 20.0]])).tolist()
    [[20.0, 10.0, 0.0]]
  """
  m = v.shape[-1]
  match = lambda j: (r == v[:, j:j + 1]) & used[:, j:j + 1]
  if m <= DENSE_LEVELS:
    out = jnp.zeros(r.shape, values.dtype)
    for j in range(m):
      out = out + jnp.where(match(j), values[:, j:j + 1], 0.0)
    return out
  at = (r[..., None] == v[:, None, :]) & used[:, None, :]
  return jnp.sum(jnp.where(at, values[:, None, :], 0.0), axis=-1)


def _group_moments(own_r, own_succ, v, p, succ_lvl, extra, table, n_others, use_std, eps, gate):
  """E[Â⁺·gate], E[Â⁻·gate] for one sample of reward own_r in a group with the others drawn.

  The others are ``n_others`` i.i.d. on-policy draws over reward levels v with probabilities p
  (``table`` enumerates their multisets), plus fixed extra rewards (off-policy samples).
  The gate is gate[0] ≤ K ≤ gate[1] with K the on-policy successes (own_succ counts the sample).
  """
  counts, log_coef = table
  n = 1 + n_others + extra.shape[0]
  log_p = jnp.where(p > 0, safe_log(p), 0.0)[None, :]
  dead = (counts > 0) & (p <= 0)[None, :]
  weights = jnp.exp(log_coef + jnp.sum(jnp.where(dead, NEG_INF, counts * log_p), axis=1))
  dv = v - own_r
  de = extra - own_r
  adv = group_advantage(own_r, counts @ dv + jnp.sum(de), counts @ (dv * dv) + jnp.sum(de * de),
                        n, use_std, eps)
  k = counts @ succ_lvl + own_succ
  gated = (k >= gate[0]) & (k <= gate[1])
  pos = jnp.sum(jnp.where(gated, weights * jnp.maximum(adv, 0.0), 0.0))
  neg = jnp.sum(jnp.where(gated, weights * jnp.maximum(-adv, 0.0), 0.0))
  return pos, neg


def enumerated_advantage(inst, pi_old, n_others: int, m: int, use_std: bool, eps: float,
                         threshold: float, gate=(0, 1 << 30), demo_in_group: bool = False):
  r"""[X, Y] (E[Â⁺ 1_gate | y], E[Â⁻ 1_gate | y]) for an on-policy sample y, by enumeration.

  .. math:: \mathbb{E}[\hat A^{\pm} \mid y] = \sum_{c} \mathrm{Mult}(c; n_{others}, \pi_{old})\,
            \hat A^{\pm}(r(y); c)

  over the multisets c of the other samples' reward levels (and, with ``demo_in_group``, over the
  demonstration y* ∼ d too). Â⁺ = max(Â, 0), Â⁻ = max(−Â, 0).

  Args:
    inst: instance; pi_old: [X, Y] sampling policy.
    n_others: other on-policy samples in the group (G − 1).
    m: reward levels per prompt (:func:`resolve_levels`).
    use_std, eps: std normalisation.
    threshold: success means r > threshold (for the gate).
    gate: (low, high) on the number of on-policy successes K (inclusive).
    demo_in_group: one demonstration y* ∼ d is in the group statistics.

  Returns:
    (pos, neg), each [X, Y] (0 off the RL support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> pos, neg = enumerated_advantage(inst, jnp.array([[0.5, 0.5]]), 1, 2, False, 1e-6, 0.0)
    >>> (pos - neg).tolist()  # r − E[mean of 2] = (1 − 1/2)(r − 1/2)
    [[-0.25, 0.25]]
  """
  table = level_table(n_others, m)
  support = rl_support(inst)
  gate = jnp.asarray(gate, pi_old.dtype)

  def row(r_row, s_row, p_row, d_row):
    level_of, v, p, _ = _row_levels(r_row, s_row, p_row, m)
    succ_lvl = (v > threshold).astype(v.dtype)

    def own(r_y):
      succ = (r_y > threshold).astype(r_y.dtype)
      if not demo_in_group:
        return _group_moments(r_y, succ, v, p, succ_lvl, jnp.zeros((0,), r_y.dtype), table,
                              n_others, use_std, eps, gate)
      pos, neg = jax.vmap(lambda r_demo: _group_moments(
          r_y, succ, v, p, succ_lvl, r_demo[None], table, n_others, use_std, eps, gate))(r_row)
      dd = jnp.where(d_row > 0, d_row, 0.0)
      return jnp.sum(dd * pos), jnp.sum(dd * neg)
    # Â depends on y only through r(y): one enumeration per level, read back per response.
    pos, neg = jax.vmap(own)(v)
    return level_values(level_of, pos), level_values(level_of, neg)

  pos, neg = jax.vmap(row)(inst.reward, support, pi_old, inst.data)
  return jnp.where(support, pos, 0.0), jnp.where(support, neg, 0.0)


def enumerated_off_advantage(inst, pi_old, n_on: int, m: int, use_std: bool, eps: float,
                             on_support: bool = False):
  r"""[X, Y] (E[Â_off⁺ | y*], E[Â_off⁻ | y*]) of a demonstration y* among n_on on-policy draws.

  .. math:: \mathbb{E}[\hat A_{off}^{\pm} \mid y^*] = \sum_{c}
            \mathrm{Mult}(c; n_{on}, \pi_{old})\, \hat A^{\pm}(r(y^*); c)

  Args:
    inst: instance; pi_old: [X, Y] sampling policy of the on-policy draws.
    n_on: on-policy samples in the group (≥ 0).
    m: reward levels per prompt; use_std, eps: std normalisation.
    on_support: a static promise that every real response has reference > 0 (a tree's leaf
      instance with ``support_only``), so every response's reward is one of its row's levels and
      the per-response fallback is not compiled (on XLA:CPU the ``lax.cond`` that guards it cost
      6 ms of SRFT's field per 16 prompts on the k = 8, T = 5 tree even when not taken).

  Returns:
    (pos, neg), each [X, Y] (every response as a possible demonstration).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> pos, neg = enumerated_off_advantage(inst, jnp.array([[0.5, 0.5]]), 1, 2, False, 1e-6)
    >>> (pos - neg).tolist()  # r* − E[mean of 2]
    [[-0.25, 0.25]]
  """
  table = level_table(n_on, m)
  support = rl_support(inst)
  gate = jnp.asarray((0, 1 << 30), pi_old.dtype)

  v, p, used = jax.vmap(lambda *a: _row_levels(*a, m)[1:])(inst.reward, support, pi_old)

  def enumerate_rows(own_r):  # [X, n] own rewards -> (pos, neg) [X, n]
    def row(r_row, v_row, p_row):
      return jax.vmap(lambda r_y: _group_moments(
          r_y, 0.0, v_row, p_row, jnp.zeros_like(v_row), jnp.zeros((0,), r_y.dtype), table, n_on,
          use_std, eps, gate))(r_row)
    return jax.vmap(row)(own_r, v, p)

  def by_level(_):
    return tuple(read_levels(inst.reward, v, used, a) for a in enumerate_rows(v))

  # Â_off depends on y* only through r(y*): when every response's reward is one of its row's
  # levels (always, unless a response off the support has a reward no support response has), one
  # enumeration per level is read back per response (m, not Y, enumerations per row). The cond is
  # outside the rows' vmap, so it stays a branch (both sides run only under an outer vmap).
  if on_support:
    pos, neg = by_level(None)
  else:
    at = (inst.reward[..., None] == v[:, None, :]) & used[:, None, :]      # [X, Y, m]
    pos, neg = jax.lax.cond(jnp.all(jnp.any(at, axis=-1) | ~inst.response_mask), by_level,
                            lambda _: enumerate_rows(inst.reward), None)
  return jnp.where(inst.response_mask, pos, 0.0), jnp.where(inst.response_mask, neg, 0.0)


def value(pi: jax.Array, r: jax.Array) -> jax.Array:
  """[X, 1] V = E_π r per prompt (kept as a column for broadcasting).

  Examples:
    >>> import jax.numpy as jnp
    >>> value(jnp.array([[0.25, 0.75]]), jnp.array([[0.0, 1.0]])).tolist()
    [[0.75]]
  """
  return masked_dot(pi, r, keepdims=True)


def mean_group_advantage(inst: Instance, pi_old: jax.Array, n: int) -> jax.Array:
  r"""[X, Y] E[Â | y] without std for an on-policy sample y in a group of n from π_old.

  .. math:: \mathbb{E}[\hat A \mid y] = (1 - 1/n)\,(r(y) - V_{old}), \qquad n \ge 2

  and r(y) for a group of one (verl: mean 0). E_{y∼π}[Â ∇log π(y)] = F_π of this.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> mean_group_advantage(inst, jnp.array([[0.5, 0.5]]), 4).tolist()
    [[-0.375, 0.375]]
    >>> mean_group_advantage(inst, jnp.array([[0.5, 0.5]]), 1).tolist()
    [[0.0, 1.0]]
  """
  if n < 1:
    raise ValueError(f"a group needs at least one sample, got {n}")
  if n == 1:
    return inst.reward * 1.0
  return (1.0 - 1.0 / n) * (inst.reward - value(pi_old, inst.reward))


def sample_group_advantage(rewards: jax.Array, use_std: bool, eps: float) -> jax.Array:
  r"""[n] advantages Â_i = (r_i − r̄)/(s + ε) (or r_i − r̄) of a sampled group of n rewards.

  Computed from deviations r_j − r_i, as in the exact enumeration; a group of one gets Â = r
  (verl: mean 0, std 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> sample_group_advantage(jnp.array([1.0, 0.0]), False, 1e-6).tolist()
    [0.5, -0.5]
    >>> sample_group_advantage(jnp.array([0.7]), False, 1e-6).tolist()
    [0.7]
  """
  n = rewards.shape[-1]
  diff = rewards[None, :] - rewards[:, None]       # [i, j] = r_j − r_i
  return group_advantage(rewards, jnp.sum(diff, axis=1), jnp.sum(diff * diff, axis=1), n,
                         use_std, eps)


def clip_weight(a_pos, a_neg, ratio, clip_low, clip_high):
  r"""E[Â 1_stable | y] = Â⁺ 1{ratio ≤ 1 + ε_hi} − Â⁻ 1{ratio ≥ 1 − ε_lo} (PPO's clip mask).

  1_stable = 0 iff (Â > 0, ratio > 1 + ε_hi) or (Â < 0, ratio < 1 − ε_lo): there the clipped
  surrogate min(ratio Â, clip(ratio) Â) is constant in θ (fusion-methods.md Rule 3).

  Examples:
    >>> import jax.numpy as jnp
    >>> clip_weight(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), jnp.array([1.5, 0.5]),
    ...             0.2, 0.2).tolist()
    [0.0, 0.0]
  """
  return (jnp.where(ratio > 1.0 + clip_high, 0.0, a_pos)
          - jnp.where(ratio < 1.0 - clip_low, 0.0, a_neg))


def success_stats(inst: Instance, pi_old: jax.Array, threshold: float):
  """p = π_old(Y⁺), V⁺ = E[r | success], V⁻ = E[r | failure] per prompt ([X] each), and Y⁺.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(success_stats(inst, jnp.array([[0.25, 0.75]]), 0.0)[0][0])
    0.75
  """
  succ = success(inst, threshold)
  p = jnp.sum(jnp.where(succ, pi_old, 0.0), axis=-1)
  r_pos = jnp.sum(jnp.where(succ, pi_old * inst.reward, 0.0), axis=-1)
  r_neg = jnp.sum(jnp.where(~succ & (pi_old > 0), pi_old * inst.reward, 0.0), axis=-1)
  v_pos = jnp.where(p > 0, r_pos / jnp.where(p > 0, p, 1.0), 0.0)
  v_neg = jnp.where(p < 1, r_neg / jnp.where(p < 1, 1.0 - p, 1.0), 0.0)
  return p, v_pos, v_neg, succ


def gated_mean_advantage(inst: Instance, pi_old: jax.Array, n: int, gate_low: int,
                         threshold: float) -> jax.Array:
  r"""[X, Y] E[Â 1{K ≥ gate_low} | y] without std, as a binomial sum over the others' successes.

  .. math:: \sum_{j=0}^{n-1} \mathrm{Bin}(j; n-1, p)\,
            1\{j + s(y) \ge \gamma\}\,\Big(r(y) - \frac{r(y) + jV^+ + (n-1-j)V^-}{n}\Big)

  (given j successes among the n − 1 others, their reward sum has mean jV⁺ + (n − 1 − j)V⁻;
  s(y) = 1 for a success). A group of one has Â = r(y). The sum over j depends on y only through
  s(y), so it is taken once per prompt and outcome: with P_s = Σ_j Bin(j) 1{j + s ≥ γ} and
  Q_s = Σ_j Bin(j) 1{j + s ≥ γ}(jV⁺ + (n − 1 − j)V⁻), the value is (1 − 1/n) r(y) P_{s(y)} −
  Q_{s(y)}/n (cost [X, Y] + [X, 2, n], not [X, Y, n]).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> gated_mean_advantage(inst, jnp.array([[0.5, 0.5]]), 2, 0, 0.0).tolist()
    [[-0.25, 0.25]]
  """
  p, v_pos, v_neg, succ = success_stats(inst, pi_old, threshold)
  j = jnp.arange(n, dtype=pi_old.dtype)                           # others' successes 0..n-1
  pmf = binom_pmf(n - 1, p)                                        # [X, n]
  gate = (j[None, :] + jnp.arange(2, dtype=j.dtype)[:, None]) >= gate_low  # [2, n]: s, j
  gated = jnp.where(gate[None], pmf[:, None, :], 0.0)              # [X, 2, n]
  mass = jnp.sum(gated, axis=-1)                                   # [X, 2] P_s
  pick = lambda table: jnp.where(succ, table[:, 1:2], table[:, 0:1])  # [X, Y] at s(y)
  if n == 1:
    return inst.reward * pick(mass)
  others = j[None, :] * v_pos[:, None] + (n - 1 - j)[None, :] * v_neg[:, None]  # [X, n]
  spread = jnp.sum(gated * others[:, None, :], axis=-1)            # [X, 2] Q_s
  return (1.0 - 1.0 / n) * inst.reward * pick(mass) - pick(spread) / n


def fill_reward_levels(inst: Instance, cfg):
  """The ``prepare`` hook of the recipes that enumerate groups: ``reward_levels`` read from
  ``inst`` when unset (the level count fixes the compiled enumeration's shape), and refused when
  set below the instance's (the enumeration would drop reward levels).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes import GroupPGConfig
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> fill_reward_levels(inst, GroupPGConfig()).reward_levels
    2
  """
  try:
    levels = reward_levels(inst)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    levels = None
  if cfg.reward_levels is None:
    return dataclasses.replace(cfg, reward_levels=resolve_levels(inst, None))
  if levels is not None and cfg.reward_levels < levels:
    raise ConfigError(f"{type(cfg).__name__}.reward_levels is {cfg.reward_levels}, expected at "
                      f"least the instance's {levels} distinct rewards per prompt")
  return cfg
