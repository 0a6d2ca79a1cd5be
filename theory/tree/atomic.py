r"""The atomic case as depth-1 trees, and the leaf set of any tree as an atomic instance.

- :func:`tree_from_atomic`: an atomic :class:`~nondecoupling.theory.instance.Instance` [X, Y] as a
  depth-1 tree (T = 1): one root per prompt whose k = |Y| slots are the responses, each a leaf
  (length 1); responses outside the RL support (masked, or ρ = 0) are absent slots. The vocabulary
  is the responses plus an EOS the reference never emits.
- :func:`leaf_instance`: the leaf set of any tree as an atomic instance on the flat slot axis
  (:func:`~nondecoupling.theory.tree.policy.flat_slots`, [X, Σ_t N_t k]): d(y), ρ(y) = Π_t ρ(y_t|y_<t)
  and r(y) on the leaf slots, every other slot masked. Parts A–F then apply verbatim to the leaves
  (every full-support leaf distribution is an autoregressive policy), which is how the atomic engine
  checks the tree engine, and how the frontier regret of a tree policy is computed. For a depth-1
  tree from :func:`tree_from_atomic` it returns the original instance (on the RL support).
- :func:`leaf_policy` and :func:`policy_from_leaves`: a tree policy as an atomic policy on that
  axis and back (conditionals computed bottom-up).

References: THEORY.md part G ("parts A–F hold verbatim on the leaf set").
"""

from __future__ import annotations

import jax.numpy as jnp

from ..instance import Instance
from ..objectives import rl_support
from .instance import TreeInstance, TreeLevel
from .policy import (
  Levels,
  conditionals_from_leaf_masses,
  flat_slots,
  leaf_log_probs,
  leaf_mask,
  reference_log_probs,
)

__all__ = ["tree_from_atomic", "leaf_instance", "leaf_policy", "policy_from_leaves",
           "unflat_slots", "atomic_policy_as_tree"]


def tree_from_atomic(inst: Instance) -> TreeInstance:
  """The depth-1 tree of an atomic instance (one level, one root, k = |Y| leaf slots).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 2.0]], 1.0,
    ...                      reference=[[0.25, 0.75, 0.0]])
    >>> tree_from_atomic(inst).levels[0].leaf.tolist()
    [[[True, True, False]]]
  """
  sup = rl_support(inst)
  n_x = inst.data.shape[0]
  z = lambda dt: jnp.zeros((n_x, 1), dt)
  level = TreeLevel(
      node=jnp.ones((n_x, 1), bool), parent=z(jnp.int32), token=z(jnp.int32),
      child=jnp.zeros(sup.shape, jnp.int32)[:, None, :], internal=jnp.zeros_like(sup)[:, None, :],
      leaf=sup[:, None, :], reference=jnp.where(sup, inst.reference, 0.0)[:, None, :],
      data=jnp.where(sup, inst.data, 0.0)[:, None, :],
      reward=jnp.where(sup, inst.reward, 0.0)[:, None, :])
  return TreeInstance(prompt_weights=inst.prompt_weights, beta=inst.beta, levels=(level,))


def leaf_instance(tree: TreeInstance, support_only: bool = False) -> Instance:
  r"""The leaf set of a tree as an atomic instance on the flat slot axis [X, Σ_t N_t k].

  ρ(y) is the product of the reference conditionals along y (exp of its log-space sum).

  Args:
    tree: the tree.
    support_only: give the indicator 1{ρ(y) > 0} as the reference instead of ρ(y), for callers
      that use the reference only through its support (the group recipes, through
      ``rl_support``). On a tree that is every leaf slot (ρ(a|s) > 0 exactly on the slots that
      exist, :class:`~nondecoupling.theory.tree.instance.TreeLevel`), so no pass over the paths
      is made (HPT's exact field on the k = 8, T = 5 benchmark tree: 282 → 218 ms), and a leaf
      whose ρ(y) underflows float64 still counts as reachable.

  Returns:
    The atomic instance [X, Σ_t N_t k] of the leaves (every other slot masked).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> inst = leaf_instance(tree)
    >>> inst.reference.tolist(), inst.response_mask.tolist()
    ([[0.5, 0.0, 0.25, 0.25]], [[True, False, True, True]])
    >>> leaf_instance(tree, support_only=True).reference.tolist()
    [[1.0, 0.0, 1.0, 1.0]]
  """
  mask = leaf_mask(tree)
  if support_only:
    rho = mask.astype(tree.levels[0].reference.dtype)
  else:
    rho = jnp.where(mask, jnp.exp(flat_slots(leaf_log_probs(tree, reference_log_probs(tree)))),
                    0.0)
  data = jnp.where(mask, flat_slots(tuple(lv.data for lv in tree.levels)), 0.0)
  reward = jnp.where(mask, flat_slots(tuple(lv.reward for lv in tree.levels)), 0.0)
  return Instance(prompt_weights=tree.prompt_weights, data=data, reference=rho, reward=reward,
                  beta=tree.beta, response_mask=mask)


def leaf_policy(tree: TreeInstance, log_pi: Levels) -> jnp.ndarray:
  """[X, Σ_t N_t k] log π(y|x) on the leaf slots (−∞ elsewhere): the tree policy as atomic.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> # flat slots; 0 off the leaves
    >>> jnp.exp(leaf_policy(tree, reference_log_probs(tree))).tolist()
    [[0.5, 0.0, 0.25, 0.25]]
  """
  return flat_slots(leaf_log_probs(tree, log_pi))


def unflat_slots(tree: TreeInstance, flat: jnp.ndarray) -> Levels:
  """The inverse of :func:`~nondecoupling.theory.tree.policy.flat_slots` (per-level arrays).

  Examples:
    >>> from nondecoupling.theory.tree.policy import flat_slots
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [a.tolist() for a in unflat_slots(tree, flat_slots(tuple(lv.data for lv in tree.levels)))]
    [[[[0.5, 0.0]]], [[[0.0, 0.5]]]]
  """
  out, start = [], 0
  for lv in tree.levels:
    shape = lv.reference.shape
    size = shape[-2] * shape[-1]
    out.append(flat[..., start:start + size].reshape(shape))
    start += size
  return tuple(out)


def policy_from_leaves(tree: TreeInstance, leaf_log_pi: jnp.ndarray) -> Levels:
  """The tree policy with leaf distribution ``leaf_log_pi`` [X, Σ_t N_t k] (conditionals bottom-up).

  Nodes the distribution gives no mass take the reference's rows.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> leaves = jnp.log(jnp.array([[0.5, 0.0, 0.125, 0.375]]))  # π(0) = ½, π(1 0) = ⅛, π(1 1) = ⅜
    >>> [[round(v, 6) for v in jnp.exp(lp).ravel().tolist()] for lp in policy_from_leaves(tree, leaves)]
    [[0.5, 0.5], [0.25, 0.75]]
  """
  return conditionals_from_leaf_masses(tree, unflat_slots(tree, leaf_log_pi))


def atomic_policy_as_tree(log_pi: jnp.ndarray) -> Levels:
  """An atomic policy [X, Y] as the policy of the depth-1 tree of :func:`tree_from_atomic`.

  Examples:
    >>> import jax.numpy as jnp
    >>> [jnp.exp(lp).tolist() for lp in atomic_policy_as_tree(jnp.log(jnp.array([[0.25, 0.75]])))]
    [[[[0.25, 0.75]]]]
  """
  return (log_pi[:, None, :],)
