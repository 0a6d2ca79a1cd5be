r"""The KL constructs of G3–G4 as tree recipes: the exact policy gradient of J plus a KL term.

Three placements of the KL term a trainer can use (THEORY.md G3–G4, this project's), each an
ascent direction on the per-node logits (prompt weights included):

- ``k1_reward``: REINFORCE on r − β Σ_t k1_t: exact field w_x P_π(s) F_s (Q^π − β(k1 + K(s·))) = ∇J_β;
- ``k2_loss``: REINFORCE on r, minus β Σ_t ∇k2 at the sampled tokens: w_x P_π(s) F_s (Q^π − β k1);
- ``k3_loss``: REINFORCE on r, minus β Σ_t ∇k3: w_x P_π(s) (F_s Q^π − β(π(·|s) − ρ(·|s))).

The exact fields are :func:`~..fixed_points.ascent_field`; the estimators draw n responses per
prompt from π (:mod:`..sampling`) and form the per-edge coefficients a trainer's loss gives:
C(s, a) = (1/n) Σ_i [s·a on y_i] (f(y_i) + c(s, a)), with the leaf factor f = r − β log π(y)/ρ(y)
(k1 in the reward) or f = r, and the token factor c = 0, −β k1 (k2) or −β(1 − e^{−k1}) (k3);
their pull-back Σ C(s, a) ∇log π(a|s) is an unbiased estimate of the field. These recipes are not
registered in :data:`~.registry.TREE_RECIPES` (the fusion recipes live there): the trainer takes
any :class:`~.base.TreeRecipe`.

References: THEORY.md G3–G4; Schulman 2020 (k1/k2/k3); verl ``kl_penalty`` (research/
fusion-methods.md addendum).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ..atomic import leaf_instance, leaf_policy
from ..fields import weighted
from ..fixed_points import CONSTRUCTS, ascent_field
from ..instance import TreeInstance
from ..objectives import log_ratios
from ..policy import Levels, policy_log_probs
from ..sampling import leaf_histogram, pullback, sample_leaves, subtree_totals
from .base import TreeRecipe

__all__ = ["construct_field", "construct_estimate", "KL_CONSTRUCT_RECIPES"]


@compiled("cfg", "construct")
def construct_field(tree: TreeInstance, theta: Levels, cfg, construct: str) -> Levels:
  r"""The exact expected ascent field of a KL construct at logits θ, prompt weights included.

  Args:
    tree: the tree.
    theta: per-level logits [X, N_t, k].
    cfg: unused (the constructs have no options).
    construct: one of :data:`~..fixed_points.CONSTRUCTS`.

  Returns:
    Per-level field [X, N_t, k].

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> [round(float(v), 6) for v in construct_field(tree, initial_logits(tree), None, "k2_loss")[0][0, 0]]
    [-0.25, 0.25]
  """
  del cfg
  return weighted(tree, ascent_field(tree, policy_log_probs(tree, theta), construct))


@compiled("cfg", "n", "construct")
def construct_estimate(tree: TreeInstance, theta: Levels, cfg, key: jax.Array, n: int,
                       construct: str) -> Levels:
  r"""The mean over n responses per prompt drawn from π of the construct's estimator (unbiased).

  Args:
    tree: the tree.
    theta: per-level logits.
    cfg: unused.
    key: PRNG key.
    n: responses per prompt.
    construct: one of :data:`~..fixed_points.CONSTRUCTS`.

  Returns:
    Per-level estimate [X, N_t, k] (prompt weights included).

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> g = construct_estimate(tree, initial_logits(tree), None, jax.random.PRNGKey(0), 20000,
    ...                        "k1_reward")
    >>> abs(float(g[0][0, 0, 1]) - 0.25) < 0.01
    True
  """
  del cfg
  log_pi = policy_log_probs(tree, theta)
  idx = sample_leaves(tree, log_pi, key, n)
  inst = leaf_instance(tree)
  at = lambda flat: jnp.take_along_axis(flat, idx, axis=-1)
  factor = at(inst.reward)
  if construct == "k1_reward":
    log_ratio = leaf_policy(tree, log_pi) - jnp.log(jnp.where(inst.response_mask,
                                                                inst.reference, 1.0))
    factor = factor - tree.beta * at(jnp.where(inst.response_mask, log_ratio, 0.0))
  coeff = subtree_totals(tree, leaf_histogram(tree, idx, factor))
  if construct != "k1_reward":
    counts = subtree_totals(tree, leaf_histogram(tree, idx))
    slopes = log_ratios(tree, log_pi)
    if construct == "k3_loss":
      slopes = tuple(-jnp.expm1(-k) for k in slopes)
    coeff = tuple(c - tree.beta * s * m for c, s, m in zip(coeff, slopes, counts))
  coeff = tuple(c / n for c in coeff)
  return weighted(tree, pullback(tree, log_pi, coeff))


def _recipe(construct: str, summary: str) -> TreeRecipe:
  return TreeRecipe(
      name=construct, config=None,
      field=functools.partial(construct_field, construct=construct),
      estimate=functools.partial(construct_estimate, construct=construct),
      summary=summary,
      reference="THEORY.md G3-G4 (this project's); verl kl_penalty / use_kl_loss")


KL_CONSTRUCT_RECIPES: dict[str, TreeRecipe] = {
    "k1_reward": _recipe("k1_reward", "REINFORCE on r - beta sum_t k1_t (= grad J_beta)"),
    "k2_loss": _recipe("k2_loss", "REINFORCE on r plus beta k2 per token in the loss"),
    "k3_loss": _recipe("k3_loss", "REINFORCE on r plus beta k3 per token in the loss"),
}
assert tuple(KL_CONSTRUCT_RECIPES) == CONSTRUCTS
