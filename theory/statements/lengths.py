r"""G5 of THEORY.md part G (this project's): length normalisation in group policy gradients.

Statements on the exact on-policy group field g_mode = E[Σ_i Â_i n_i ∇log π(o_i)] of a group of G
drawn from π (:func:`~nondecoupling.theory.tree.groups.group_field`, enumerated over multisets of
levels), prompt weights included. With mean-centred advantages and no std, E[Â_1 | o_1 = y] =
(1 − 1/G)(r(y) − J_x) for G ≥ 2 (the others' mean has expectation J_x = E_π r), so:

- ``seq-mean-token-sum`` (n = 1/G): g = (G − 1)/G · ∇J (:func:`sequence_sum_is_scaled_gradient`);
- ``seq-mean-token-mean`` (GRPO's n = 1/(G|y|)): g = (G − 1)/G · E_π[(r − J_x)/|y| ∇log π(y)]
  (:func:`sequence_mean_is_length_weighted_gradient`): a length-weighted policy gradient, not a
  multiple of ∇J — short correct answers are pushed up harder, short wrong ones down harder;
- ``seq-mean-token-sum-norm`` (Dr.GRPO's n = 1/(G T)): g = (G − 1)/(G T) · ∇J
  (:func:`constant_norm_is_scaled_gradient`);
- with every response of a prompt of the same length ℓ_x, all four normalisers give the same field
  up to constant factors per prompt, std normalisation or not: g_mean = g_token = g_sum / ℓ_x and
  g_norm = g_sum / T (:func:`constant_length_normalisers_agree`).

``token-mean`` (DAPO) has no such closed form: its n depends on the others' lengths. Each identity
was checked against the brute-force enumeration of ordered groups (tests/test_tree_groups.py)
before being stated. The right-hand sides come from a different route: ∇J by the tree's reward
recursion (:func:`~nondecoupling.theory.tree.objectives.reward_grad`) and the REINFORCE field of an
explicit leaf weight; the left-hand sides enumerate the group.

Slack (theory/verdict.py): each side is a node field P(s) F_s Q with Q an expectation of a leaf
weight; with |w| the leaf weights' magnitudes (for the enumerated side G E[|w_1| | y] + |r(y)|:
the first bounds the K multiset terms it sums, the second the rounding of r_i − mean; for ∇J by
the reward recursion |r| + |r − J_x|, since Q − V rounds at the scale of the rewards), S = 2 max_s
P(s) Σ_a π(a|s) Q^{|w|}(s, a) summed over both sides, N = K + (number of slots) terms; slack =
rounding_slack(S, N), divided by
max(1, max |rhs|) like the margin.

References: THEORY.md G5 (this project's); verl ``core_algos.py::agg_loss``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..tree import groups
from ..tree.atomic import unflat_slots
from ..tree.fields import expected_to_go, reinforce_field, weighted
from ..tree.instance import TreeInstance
from ..tree.objectives import reward_grad, reward_to_go
from ..tree.policy import Levels, flat_slots, leaf_lengths, leaf_mask, log_reach, policy_log_probs
from ..verdict import Verdict, rounding_slack

__all__ = ["STATEMENT_GROUP", "sequence_sum_is_scaled_gradient",
           "sequence_mean_is_length_weighted_gradient", "constant_norm_is_scaled_gradient",
           "constant_length_normalisers_agree", "has_constant_length"]

STATEMENT_GROUP = 4  # the group size the statements use by default


def _real(tree: TreeInstance) -> jax.Array:
  return tree.prompt_weights > 0


def _max_abs(levels: Levels, tree: TreeInstance) -> jax.Array:
  real = _real(tree)[..., None, None]
  return jnp.max(jnp.stack([jnp.max(jnp.where(real, jnp.abs(a), 0.0)) for a in levels]))


def _magnitude(tree: TreeInstance, log_pi: Levels, leaf_abs: jax.Array) -> jax.Array:
  """2 max_s w_x P(s) Σ_a π(a|s) Q^{|w|}(s, a): the size of the terms of a node field."""
  q, _ = expected_to_go(tree, log_pi, unflat_slots(tree, leaf_abs))
  reach = log_reach(tree, log_pi)
  w = tree.prompt_weights[..., None]
  per = [w * jnp.exp(r) * jnp.sum(jnp.exp(lp) * qa, axis=-1)
         for r, lp, qa in zip(reach, log_pi, q)]
  return 2.0 * jnp.max(jnp.stack([jnp.max(jnp.where(_real(tree)[..., None], a, 0.0))
                                  for a in per]))


def _enumerated(tree, log_pi, mode, group_size, levels, use_std=False, max_length=None):
  """(weighted group field, its leaf magnitudes [X, W], multiset count).

  The magnitudes are G E[|w_1| | y] plus |r(y)|: an advantage r_i − mean rounds at the scale of the
  rewards, not of its own size (equal rewards in a group give Â = 0 up to ulp(r), and G n ≤ 1).
  """
  t_max = float(tree.depth if max_length is None else max_length)
  r = groups.leaf_rewards(tree)
  pos, neg, _ = groups.expected_group_weights(
      tree, log_pi, r, group_size=group_size, mode=mode,
      use_std=use_std, eps=1e-6, max_length=t_max, levels=levels)
  field = weighted(tree, reinforce_field(tree, log_pi, unflat_slots(tree, pos - neg)))
  size = pos + neg + jnp.where(leaf_mask(tree), jnp.abs(r), 0.0)
  return field, size, groups.group_multisets(levels, group_size)


def _compare(tree, log_pi, lhs: Levels, rhs: Levels, abs_l, abs_r, terms: int,
             applies) -> Verdict:
  """lhs = rhs as fields: margin −max|lhs − rhs| / max(1, max|rhs|), computed slack."""
  diff = tuple(a - b for a, b in zip(lhs, rhs))
  size = _max_abs(rhs, tree)
  n_slots = sum(int(lv.reference.shape[-2] * lv.reference.shape[-1]) for lv in tree.levels)
  scale = _magnitude(tree, log_pi, abs_l) + _magnitude(tree, log_pi, abs_r)
  slack = rounding_slack(scale, terms + n_slots)
  denom = jnp.maximum(1.0, size)
  return Verdict(_max_abs(lhs, tree), size, -_max_abs(diff, tree) / denom,
                 jnp.asarray(applies), jnp.full((), jnp.nan), slack / denom)


def _centred(tree, log_pi):
  """[X, W] r(y) − J_x on the leaves (J_x = V^π(root) by the reward recursion)."""
  _, v = reward_to_go(tree, log_pi)
  r = groups.leaf_rewards(tree)
  return jnp.where(leaf_mask(tree), r - v[0][..., :1], 0.0)


def _gradient_abs(tree, log_pi, c):
  """Leaf magnitudes of c ∇J by the reward recursion: Q(s, a) − V(s) rounds at the scale of |r|
  (not of the centred |r − J_x|, which can be far smaller), so both count."""
  r = jnp.where(leaf_mask(tree), groups.leaf_rewards(tree), 0.0)
  return jnp.abs(c) * (jnp.abs(r) + jnp.abs(_centred(tree, log_pi)))


def sequence_sum_is_scaled_gradient(tree: TreeInstance, theta: Levels,
                                    group_size: int = STATEMENT_GROUP, levels: int = 2
                                    ) -> Verdict:
  r"""G5: mean-centred Â, no std, n = 1/G: E[Σ_i w_i ∇log π(o_i)] = (G − 1)/G · ∇J (G ≥ 2).

  Args:
    tree: the tree; theta: per-level probe logits.
    group_size: G (static).
    levels: static count of distinct rewards per prompt (≥ the tree's).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.zeros((1, 1, 2)))
    >>> v = sequence_sum_is_scaled_gradient(tree, theta)
    >>> bool(v.applies), bool(v.margin >= -v.slack), round(float(v.rhs), 6)
    (True, True, 0.09375)
  """
  log_pi = policy_log_probs(tree, theta)
  lhs, abs_l, k = _enumerated(tree, log_pi, "seq-mean-token-sum", group_size, levels)
  c = (group_size - 1) / group_size
  rhs = tuple(c * a for a in reward_grad(tree, log_pi))
  return _compare(tree, log_pi, lhs, rhs, abs_l, _gradient_abs(tree, log_pi, c), k,
                  group_size >= 2)


def sequence_mean_is_length_weighted_gradient(tree: TreeInstance, theta: Levels,
                                              group_size: int = STATEMENT_GROUP,
                                              levels: int = 2) -> Verdict:
  r"""G5: GRPO's n = 1/(G|y|), no std: the field = (G − 1)/G · E_π[(r − J_x)/|y| ∇log π(y)].

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.zeros((1, 1, 2)))
    >>> v = sequence_mean_is_length_weighted_gradient(tree, theta)
    >>> bool(v.applies), bool(v.margin >= -v.slack), round(float(v.rhs), 6)
    (True, True, 0.070312)
  """
  log_pi = policy_log_probs(tree, theta)
  lhs, abs_l, k = _enumerated(tree, log_pi, "seq-mean-token-mean", group_size, levels)
  c = (group_size - 1) / group_size
  weight = c * _centred(tree, log_pi) / flat_slots(leaf_lengths(tree))
  rhs = weighted(tree, reinforce_field(tree, log_pi, unflat_slots(tree, weight)))
  return _compare(tree, log_pi, lhs, rhs, abs_l, jnp.abs(weight), k, group_size >= 2)


def constant_norm_is_scaled_gradient(tree: TreeInstance, theta: Levels,
                                     group_size: int = STATEMENT_GROUP, levels: int = 2
                                     ) -> Verdict:
  r"""G5: Dr.GRPO's n = 1/(G T), no std: the field = (G − 1)/(G T) · ∇J (T = the tree's levels).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.zeros((1, 1, 2)))
    >>> v = constant_norm_is_scaled_gradient(tree, theta)
    >>> bool(v.applies), bool(v.margin >= -v.slack), round(float(v.rhs), 6)
    (True, True, 0.046875)
  """
  log_pi = policy_log_probs(tree, theta)
  lhs, abs_l, k = _enumerated(tree, log_pi, "seq-mean-token-sum-norm", group_size, levels)
  c = (group_size - 1) / (group_size * tree.depth)
  rhs = tuple(c * a for a in reward_grad(tree, log_pi))
  return _compare(tree, log_pi, lhs, rhs, abs_l, _gradient_abs(tree, log_pi, c), k,
                  group_size >= 2)


def has_constant_length(tree: TreeInstance) -> jax.Array:
  """[] bool: every leaf of each real prompt has the same length.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> one = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> two = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                  lambda y: float(y[-1]))
    >>> bool(has_constant_length(build_tree([one], [1.0], 1.0)[0]))  # |y| = 1 throughout
    True
    >>> bool(has_constant_length(build_tree([two], [1.0], 1.0)[0]))  # |y| = 1 or 2
    False
  """
  mask = leaf_mask(tree) & _real(tree)[..., None]
  length = flat_slots(leaf_lengths(tree))
  hi = jnp.max(jnp.where(mask, length, 0.0), axis=-1)
  lo = jnp.min(jnp.where(mask, length, jnp.inf), axis=-1)
  return jnp.all(jnp.where(_real(tree), hi == lo, True))


def constant_length_normalisers_agree(tree: TreeInstance, theta: Levels,
                                      group_size: int = STATEMENT_GROUP, levels: int = 2,
                                      use_std: bool = True) -> Verdict:
  r"""G5: with |y| = ℓ_x on every leaf, g_mean = g_token = g_sum/ℓ_x and g_norm = g_sum/T.

  Applies only to trees of constant length per prompt; the worst of the three comparisons. For
  ``token-mean`` the levels are (reward, length) pairs, as many as the rewards here.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = constant_length_normalisers_agree(tree, (jnp.zeros((1, 1, 2)),))
    >>> bool(v.applies), bool(v.margin >= -v.slack)
    (True, True)
  """
  log_pi = policy_log_probs(tree, theta)
  g_sum, abs_sum, k = _enumerated(tree, log_pi, "seq-mean-token-sum", group_size, levels,
                                  use_std)
  mask = leaf_mask(tree)
  ell = jnp.max(jnp.where(mask, flat_slots(leaf_lengths(tree)), 0.0), axis=-1)
  ell = jnp.where(_real(tree), ell, 1.0)[:, None, None]
  per_len = tuple(a / ell for a in g_sum)
  per_t = tuple(a / tree.depth for a in g_sum)
  applies = has_constant_length(tree)
  out = []
  for mode, rhs, div in (("seq-mean-token-mean", per_len, ell[:, :, 0]),
                         ("token-mean", per_len, ell[:, :, 0]),
                         ("seq-mean-token-sum-norm", per_t, float(tree.depth))):
    lhs, abs_l, _ = _enumerated(tree, log_pi, mode, group_size, levels, use_std)
    out.append(_compare(tree, log_pi, lhs, rhs, abs_l, abs_sum / div, k, applies))
  margins = jnp.stack([v.margin for v in out])
  i = jnp.argmin(margins)
  pick = lambda name: jnp.stack([getattr(v, name) for v in out])[i]
  return Verdict(pick("lhs"), pick("rhs"), pick("margin"), applies, jnp.full((), jnp.nan),
                 pick("slack"))
