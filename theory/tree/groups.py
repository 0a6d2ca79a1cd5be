r"""G5: length normalisation in group policy gradients, by exact enumeration of the group (ours).

A group o_1, …, o_G of responses is drawn i.i.d. from π(·|x) over the leaves of the tree. Response
i gets the per-sequence weight w_i = Â_i n_i: Â_i from the group's rewards (mean-centred, divided by
the group's unbiased std plus ε with ``use_std``; a group of one has mean 0 and std 1, as verl —
:func:`~nondecoupling.theory.recipes.advantage.group_advantage`), and n_i the length normaliser of
verl's ``agg_loss`` mode (``loss_agg_mode``):

==========================  ====================  =========================================
mode                        n_i                   used by
==========================  ====================  =========================================
``seq-mean-token-mean``     1 / (G |o_i|)         GRPO (Shao et al., arXiv 2402.03300)
``token-mean``              1 / Σ_j |o_j|         DAPO (Yu et al., arXiv 2503.14476)
``seq-mean-token-sum-norm`` 1 / (G T)             Dr.GRPO (Liu et al., arXiv 2503.20783)
``seq-mean-token-sum``      1 / G                 per-sequence sum
==========================  ====================  =========================================

(T the maximum length. verl's ``seq-mean-token-sum-norm`` divides the batch's token sum by the
padded width T only, a factor G larger than the 1/(G T) of THEORY.md G5 and of Dr.GRPO's (1/G)
objective; a constant factor, equal to a learning-rate change. ``token-mean`` is taken over the
group here; verl takes it over the whole batch.) The trainer's loss is −Σ_i n_i Σ_t Â_i ρ_{i,t} with
the ratio ρ = 1 at θ = θ_old, so the sampled ascent direction is Σ_i w_i ∇log π(o_i).

Exact expectation. The responses are exchangeable, so

.. math:: \mathbb{E}\Big[\sum_i w_i \nabla\log\pi(o_i)\Big]
          = G \sum_y \pi(y)\, h(y)\, \nabla\log\pi(y),\qquad
          h(y) = \mathbb{E}[w_1 \mid o_1 = y] = h(r(y), |y|),

and h depends on y only through its reward and length: the others are G − 1 i.i.d. draws whose
(reward, length) values are what w_1 reads. h is therefore a sum over the multisets c of the
others' LEVELS — the distinct values the weight depends on: (reward, length) pairs for
``token-mean``, rewards alone otherwise (then n_i is the own factor n(|y|)) — with multinomial
probabilities computed in log space,

.. math:: h(r, \ell) = \sum_{c} \frac{(G-1)!}{\prod_l c_l!} \prod_l p_l^{c_l}\;
          \hat A(r; c)\, n(\ell; c),\qquad p_l = \sum_{y \in \text{level } l} \pi(y).

The field is then :func:`~.fields.reinforce_field` with the leaf weight G·h (that function is
E_π[w(y) ∇log π(y)] per prompt). :func:`expected_group_weights` also returns the positive and
negative parts G E[w_1^± | o_1 = y] that PPO's clip mask needs, and G E[n_1 | o_1 = y], the weight
a per-token KL loss aggregated in the same mode receives.

Cost. With L levels per prompt the enumeration visits C(L + G − 2, G − 1) multisets for each of the
L own levels: O(L² C(L + G − 2, G − 1)) per prompt, never the leaves' count (that enters only
through an O(W L) grouping of the W leaf slots into levels). Beyond :data:`MAX_GROUP_MULTISETS`
multisets (G = 8: at most L = 18 levels) :class:`InfeasibleGroupEnumeration` is raised: callers
fall back to the sampled estimator. Measured (bench/bench_tree_groups.py, 2-core CPU, G = 8, one
prompt): see the constant's comment.

References: THEORY.md G5 (this project's); verl ``verl/trainer/ppo/core_algos.py::agg_loss`` and
``compute_grpo_outcome_advantage``; research/fusion-methods.md Rule 2 and the token-level addendum.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._numerics import NEG_INF
from ..recipes.advantage import group_advantage
from ..recipes.groups import DENSE_LEVELS, InfeasibleExactField, group_levels, level_values
from .atomic import leaf_policy, unflat_slots
from .fields import reinforce_field
from .instance import TreeInstance
from .policy import Levels, flat_slots, leaf_lengths, leaf_mask
from .token_mean_groups import TWO_REWARDS, two_reward_leaf_weights

__all__ = ["LOSS_AGG_MODES", "MAX_GROUP_MULTISETS", "InfeasibleGroupEnumeration",
           "reward_level_log_masses",
           "length_normaliser", "shares_lengths", "group_multisets", "multiset_table",
           "count_levels", "check_enumeration", "leaf_rewards", "expected_group_weights",
           "group_field"]

LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm",
                  "seq-mean-token-sum")
# Multisets of the others' levels enumerated per own level. At G = 8 this admits L = 18 levels
# (C(24, 7) = 346,104 multisets): bench/bench_tree_groups.py measured 0.71 s per prompt for L = 18
# and 1.41 s for L = 19 (compile excluded: 16 s and 27 s, the table is a constant) on the 2-core
# CPU under a load average of 14; L = 19 (480,700) and beyond are refused.
MAX_GROUP_MULTISETS = 350_000
_LOG_ZERO = -1e300  # log of an empty level's mass (finite, so that 0 · it = 0)


class InfeasibleGroupEnumeration(InfeasibleExactField):
  """The exact group field would enumerate more than :data:`MAX_GROUP_MULTISETS` multisets.

  A subclass of the atomic :class:`~nondecoupling.theory.recipes.groups.InfeasibleExactField`, so
  a caller catching that one catches this too; the message is one line naming the group size, the
  level count and the limit. Callers fall back to the sampled estimator.
  """


def _check_mode(mode: str) -> None:
  if mode not in LOSS_AGG_MODES:
    raise ValueError(f"loss_agg_mode is {mode!r}, expected one of {', '.join(LOSS_AGG_MODES)}")


def shares_lengths(mode: str) -> bool:
  """Whether n_i reads the other responses' lengths (only ``token-mean``).

  Examples:
    >>> shares_lengths("token-mean"), shares_lengths("seq-mean-token-mean")
    (True, False)
  """
  _check_mode(mode)
  return mode == "token-mean"


def length_normaliser(mode: str, own_length, group_length, group_size: int, max_length: float):
  r"""n_i of a response of length |o_i| in a group of total length Σ_j |o_j| (module table).

  Args:
    mode: one of :data:`LOSS_AGG_MODES`.
    own_length: [...] |o_i|.
    group_length: [...] Σ_j |o_j| over the group (read by ``token-mean`` only).
    group_size: G.
    max_length: T.

  Returns:
    [...] n_i.

  Examples:
    >>> [float(length_normaliser(m, 2.0, 10.0, 4, 5.0)) for m in LOSS_AGG_MODES]
    [0.125, 0.1, 0.05, 0.25]
  """
  _check_mode(mode)
  own = jnp.asarray(own_length, jnp.result_type(float))
  if mode == "seq-mean-token-mean":
    return 1.0 / (group_size * own)
  if mode == "token-mean":
    return 1.0 / jnp.asarray(group_length, own.dtype)
  if mode == "seq-mean-token-sum-norm":
    return jnp.full_like(own, 1.0 / (group_size * max_length))
  return jnp.full_like(own, 1.0 / group_size)


def group_multisets(levels: int, group_size: int) -> int:
  """C(L + G − 2, G − 1): the multisets of the G − 1 others over L levels.

  Examples:
    >>> group_multisets(2, 8), group_multisets(10, 8)
    (8, 11440)
  """
  if levels < 1 or group_size < 1:
    raise ValueError(f"levels and group size must be >= 1, got {levels}, {group_size}")
  return math.comb(levels + group_size - 2, group_size - 1)


def check_enumeration(levels: int, group_size: int) -> int:
  """The multiset count, or :class:`InfeasibleGroupEnumeration` beyond the limit.

  Examples:
    >>> check_enumeration(2, 8)
    8
    >>> check_enumeration(20, 8)
    Traceback (most recent call last):
    ...
    nondecoupling...InfeasibleGroupEnumeration: exact group field needs 657800 multisets ...
  """
  size = group_multisets(levels, group_size)
  if size > MAX_GROUP_MULTISETS:
    raise InfeasibleGroupEnumeration(
        f"exact group field needs {size} multisets (group of {group_size} over {levels} "
        f"reward/length levels), more than {MAX_GROUP_MULTISETS}: use the sampled estimator")
  return size


@functools.lru_cache(maxsize=16)
def _compositions(total: int, parts: int) -> np.ndarray:
  """[K, parts] every count vector with sum ``total`` (vectorised recursion, cached)."""
  if parts == 1:
    return np.array([[total]], np.int64)
  blocks = []
  for first in range(total, -1, -1):
    rest = _compositions(total - first, parts - 1)
    blocks.append(np.concatenate([np.full((rest.shape[0], 1), first, np.int64), rest], axis=1))
  return np.concatenate(blocks, axis=0)


def multiset_table(others: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
  r"""(counts [K, L], log multinomial coefficients [K]) of the others' multisets over L levels.

  log((G−1)! / Π_l c_l!) by lgamma; refused beyond the limit (:func:`check_enumeration`).

  Examples:
    >>> counts, log_coef = multiset_table(2, 2)
    >>> counts.tolist(), np.exp(log_coef).round(6).tolist()
    ([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]], [1.0, 2.0, 1.0])
  """
  check_enumeration(levels, others + 1)
  counts = _compositions(others, levels).astype(np.float64)
  lg = np.vectorize(math.lgamma, otypes=[np.float64])
  log_coef = math.lgamma(others + 1.0) - lg(counts + 1.0).sum(axis=1)
  return counts, log_coef


def leaf_rewards(tree: TreeInstance) -> jax.Array:
  """[X, W] r(x, y) on the flat leaf axis (0 off the leaves).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> leaf_rewards(tree).tolist()  # slots (0,), (1,), (1, 0), (1, 1); (1,) is no leaf
    [[1.0, 0.0, 1.0, 0.0]]
  """
  return jnp.where(leaf_mask(tree), flat_slots(tuple(lv.reward for lv in tree.levels)), 0.0)


def count_levels(tree: TreeInstance, mode: str, rewards=None) -> int:
  """The largest number of levels over the real prompts of a concrete tree (host side).

  Levels are the distinct (reward, length) pairs of the leaves for ``token-mean`` and the distinct
  rewards otherwise; ``rewards`` [X, W] overrides the tree's (e.g. rewards shaped by a KL term).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> count_levels(tree, "token-mean"), count_levels(tree, "seq-mean-token-mean")
    (3, 2)
  """
  r = np.asarray(leaf_rewards(tree) if rewards is None else rewards)
  length = np.asarray(flat_slots(leaf_lengths(tree)))
  mask = np.asarray(leaf_mask(tree)) & (np.asarray(tree.prompt_weights) > 0)[:, None]
  share = shares_lengths(mode)
  best = 1
  for x in range(r.shape[0]):
    keys = {(float(a), float(b) if share else 0.0) for a, b in zip(r[x][mask[x]],
                                                                    length[x][mask[x]])}
    best = max(best, len(keys))
  return best


def _row_levels(r, length, mask, log_p, m: int):
  """Group the W leaf slots of one prompt into its m levels (equal keys; O(W m), no sort).

  A level's mass is a masked sum of π(y) e^{−M} (M the row's largest log π on the support; one
  exponential per slot), its log-mass M + log of that sum: exact to rounding except for a level
  whose every leaf is below e^{−745} of the row's largest, whose mass (under 1e-323 of the total)
  becomes 0. No scatter: XLA's segment sums on CPU cost 3× the whole grouping on the benchmark
  tree.

  Returns (level index [W], level reward [m], level length [m], level log-mass [m]); unused level
  slots have log-mass −∞.
  """
  level_of, lvl_r, lvl_len, used = group_levels(r, length, mask, m)
  top = jnp.max(jnp.where(mask, log_p, NEG_INF))
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  scaled = jnp.where(mask, jnp.exp(jnp.where(mask, log_p, top) - top), 0.0)
  mass = lambda j: jnp.sum(jnp.where(level_of == j, scaled, 0.0))
  levels = jnp.arange(m)
  # Few levels: one fused pass over [m, W]; many (every leaf its own level): one at a time.
  total = jax.vmap(mass)(levels) if m <= DENSE_LEVELS else jax.lax.map(mass, levels)
  with_mass = used & (total > 0)
  lvl_log_p = jnp.where(with_mass, top + jnp.log(jnp.where(with_mass, total, 1.0)), NEG_INF)
  return level_of, lvl_r, jnp.where(used, lvl_len, 1.0), lvl_log_p


def reward_level_log_masses(tree: TreeInstance, log_pi: Levels, levels: int) -> jax.Array:
  """[X, m] log π(r(y) = v_l) for the distinct leaf rewards v_1 < … of each prompt (−∞ on unused
  level slots); O(W m) per prompt (:func:`_row_levels`), never a [W, W] table.

  Args:
    tree: the tree.
    log_pi: per-level log-policy.
    levels: static m ≥ the number of distinct rewards of every real prompt (:func:`count_levels`
      with a mode that does not share lengths).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> jnp.exp(reward_level_log_masses(tree, reference_log_probs(tree), 3)).tolist()
    [[0.25, 0.75, 0.0]]
  """
  mask = leaf_mask(tree)
  r = jnp.where(mask, leaf_rewards(tree), 0.0)
  row = lambda a, m, lp: _row_levels(a, jnp.zeros_like(a), m, lp, levels)[3]
  return jax.vmap(row)(r, mask, leaf_policy(tree, log_pi))


def _own_moments(own_r, own_len, lvl_r, lvl_len, lvl_log_p, counts, log_coef, group_size: int,
                 share: bool, use_std: bool, eps: float):
  """(E[Â⁺ n], E[Â⁻ n], E[n]) for one own level (n = 1/Σ_j|o_j| if share, else n = 1)."""
  # An unused level (mass 0) gets a huge finite negative log-mass: 0 · it = 0 and c · it ≈ −∞
  # for c ≥ 1, so Π_l p_l^{c_l} is one matrix-vector product (no mask over the constant table).
  finite_log_p = jnp.where(jnp.isfinite(lvl_log_p), lvl_log_p, _LOG_ZERO)
  weights = jnp.exp(log_coef + counts @ finite_log_p)
  dv = lvl_r - own_r
  adv = group_advantage(own_r, counts @ dv, counts @ (dv * dv), group_size, use_std, eps)
  norm = 1.0 / (own_len + counts @ lvl_len) if share else jnp.ones_like(adv)
  return (jnp.sum(weights * jnp.maximum(adv, 0.0) * norm),
          jnp.sum(weights * jnp.maximum(-adv, 0.0) * norm), jnp.sum(weights * norm))


def expected_group_weights(tree: TreeInstance, log_pi: Levels, rewards: jax.Array, *,
                           group_size: int, mode: str, use_std: bool, eps: float,
                           max_length: float, levels: int, reward_classes: int | None = None):
  r"""G E[w_1⁺ | o_1 = y], G E[w_1⁻ | o_1 = y], G E[n_1 | o_1 = y] on the flat leaf axis.

  w_1 = Â_1 n_1 with the group drawn from π (module docstring); w⁺ = max(w, 0), w⁻ = max(−w, 0)
  (n_1 > 0, so these are Â⁺ n and Â⁻ n).

  Args:
    tree: the tree [X prompts].
    log_pi: per-level log-policy the group is drawn from.
    rewards: [X, W] the reward each leaf enters the group statistics with (read on leaf slots).
    group_size: G ≥ 1.
    mode: one of :data:`LOSS_AGG_MODES`.
    use_std, eps: divide Â by the group's unbiased std plus eps.
    max_length: T of ``seq-mean-token-sum-norm``.
    levels: static level count m ≥ the true count per prompt (:func:`count_levels`).
    reward_classes: static bound on the distinct rewards per prompt (:func:`count_levels` with
      a mode that does not share lengths), or None. With ``token-mean`` and at most
      :data:`~.token_mean_groups.TWO_REWARDS`, the others' successes and total length are
      convolved (:mod:`.token_mean_groups`: no multisets, no limit) instead of enumerated.

  Returns:
    (pos, neg, norm): [X, W] each, 0 off the leaves.

  Raises:
    InfeasibleGroupEnumeration: more than :data:`MAX_GROUP_MULTISETS` multisets to enumerate.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pos, neg, _ = expected_group_weights(tree, reference_log_probs(tree), jnp.array([[0., 1.]]),
    ...     group_size=2, mode="seq-mean-token-sum", use_std=False, eps=1e-6, max_length=1.0,
    ...     levels=2)
    >>> (pos - neg).tolist()  # G · (1/G) · (1 − 1/G)(r − 1/2)
    [[-0.25, 0.25]]
  """
  share = shares_lengths(mode)
  convolve = share and reward_classes is not None and reward_classes <= TWO_REWARDS
  if not convolve:
    counts, log_coef = (jnp.asarray(a) for a in multiset_table(group_size - 1, levels))
  mask = leaf_mask(tree)
  lengths = flat_slots(leaf_lengths(tree))
  log_p = leaf_policy(tree, log_pi)
  key_len = lengths if share else jnp.zeros_like(lengths)

  if convolve:  # no grouping into levels: a leaf's length is its tree level's
    sizes = tuple(int(lv.reference.shape[-2]) * int(lv.reference.shape[-1]) for lv in tree.levels)
    row = lambda r, length, key_l, msk, lp: tuple(group_size * v for v in two_reward_leaf_weights(
        r, msk, lp, sizes, group_size=group_size, use_std=use_std, eps=eps))
    return jax.vmap(row)(jnp.where(mask, rewards, 0.0), lengths, key_len, mask, log_p)

  def row(r, length, key_l, msk, lp):
    level_of, lvl_r, lvl_len, lvl_lp = _row_levels(r, key_l, msk, lp, levels)
    own = lambda orr, ol: _own_moments(orr, ol, lvl_r, lvl_len, lvl_lp, counts, log_coef,
                                       group_size, share, use_std, eps)
    pos, neg, nrm = jax.lax.map(lambda a: own(*a), (lvl_r, lvl_len))
    scale = group_size * (1.0 if share else
                          length_normaliser(mode, length, 0.0, group_size, max_length))
    out = [jnp.where(msk, scale * level_values(level_of, v), 0.0) for v in (pos, neg, nrm)]
    return tuple(out)

  return jax.vmap(row)(jnp.where(mask, rewards, 0.0), lengths, key_len, mask, log_p)


def group_field(tree: TreeInstance, log_pi: Levels, *, group_size: int, mode: str,
                use_std: bool = False, eps: float = 1e-6, max_length: float | None = None,
                levels: int | None = None, rewards: jax.Array | None = None) -> Levels:
  r"""The exact on-policy G5 field E[Σ_i w_i ∇log π(o_i)] per prompt (no prompt weight).

  .. math:: G \sum_y \pi(y)\, h(y)\, \nabla_\theta \log\pi(y)
            = \texttt{reinforce\_field}(\pi,\ G h)

  Args:
    tree: the tree.
    log_pi: per-level log-policy (the group is drawn from it and the field taken at it).
    group_size, mode, use_std, eps: see :func:`expected_group_weights`.
    max_length: T (default: the tree's number of levels).
    levels: static level count (default :func:`count_levels`, needs a concrete tree).
    rewards: [X, W] leaf rewards (default the tree's).

  Returns:
    Per-level field [X, N_t, k].

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> g = group_field(tree, reference_log_probs(tree), group_size=4, mode="seq-mean-token-sum")
    >>> [round(v, 12) for v in g[0][0, 0].tolist()]  # (3/4) F_π r
    [-0.1875, 0.1875]
  """
  rewards = leaf_rewards(tree) if rewards is None else rewards
  levels = count_levels(tree, mode, rewards) if levels is None else levels
  t_max = float(tree.depth if max_length is None else max_length)
  pos, neg, _ = expected_group_weights(tree, log_pi, rewards, group_size=group_size, mode=mode,
                                       use_std=use_std, eps=eps, max_length=t_max, levels=levels)
  return reinforce_field(tree, log_pi, unflat_slots(tree, pos - neg))
