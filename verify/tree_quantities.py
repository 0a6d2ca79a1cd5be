"""What `check` reports for one tree file: the token-level quantities and the G1–G4 margins.

Quantities (:func:`tree_quantities`) are computed by the level recursions of theory/tree (values
bottom-up, reach top-down, KL by the chain rule). The names shared with the atomic `check`
(:data:`~nondecoupling.theory.quantities.QUANTITY_DOCS`) mean the same number on the leaf set, so
a depth-1 tree gives the atomic instance's values. Beside them: the soft Bellman value (G1), the
token-mean SFT optimum and its excess (G2), expected lengths, and the SFT loss, reward, J_β and
frontier regret of the three KL-construct fixed points (G4) with their expected length.

Margins: :func:`~.tree_checks.tree_margins` (re-exported here), every statement of
:data:`~.tree_checks.TREE_STATEMENTS` on this one tree; statements on a policy are evaluated at
seeded probe logits N(0, 1). A statement holds iff margin ≥ −slack.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..theory import objectives as atomic
from ..theory.tree import bellman, fixed_points, objectives as tree_obj, sft
from ..theory.tree.atomic import leaf_instance
from ..theory.tree.fields import expected_to_go
from ..theory.tree.instance import TreeInstance
from ..theory.tree.policy import Levels, leaf_lengths, reference_log_probs
from .exported_programs import exported_jit
from .tree_checks import tree_margins

__all__ = ["TREE_QUANTITY_DOCS", "FIXED_POINT_FIELDS", "tree_quantities", "tree_margins",
           "expected_length", "tree_shape"]

TREE_QUANTITY_DOCS = {
    "sft_loss_data": "L(d) = E_w H(d_x) over the leaves, the SFT optimum",
    "sft_loss_reference": "L(ρ), ρ(y) = Π_t ρ(y_t|y_<t)",
    "sft_loss_rl": "L(π*_β), π*_β the token-level RL optimum (G1: the Gibbs tilt of ρ)",
    "c1": "C₁(β; ρ) = L(π*_β) − L(ρ) on the leaf set",
    "c1_sft_then_rl": "C₁(β) with ρ = d (Theorem 3.1 on the leaf set)",
    "rl_value": "J_β(π*_β) = β E_w log Σ_y ρ(y) e^{r(y)/β} (sequence level)",
    "soft_value": "E_w V(root), the soft Bellman value (G1, level by level; = rl_value)",
    "reward_reference": "J(ρ)",
    "reward_rl": "J(π*_β)",
    "reward_data": "J(d)",
    "regularized_reward_data": "J_β(d; ρ)",
    "kl_rl_reference": "E_w KL(π*_β ‖ ρ) (chain rule over the nodes)",
    "kl_data_rl": "E_w KL(d ‖ π*_β)",
    "token_mean_excess": "L(π_mean) − L(d): the token-mean SFT optimum's excess (G2)",
    "expected_length_data": "E_d |y| (EOS counts)",
    "expected_length_token_mean": "E |y| under π_mean ∝ d(y)/|y| (G2: shorter)",
    "expected_length_reference": "E_ρ |y|",
    "expected_length_rl": "E |y| under π*_β",
}
FIXED_POINT_FIELDS = ("sft_loss", "reward", "regularized_reward", "regret", "kl_to_optimum",
                      "expected_length")


def expected_length(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  """E_w E_π |y| (bottom-up expectation of the leaf lengths)."""
  _, v = expected_to_go(tree, log_pi, leaf_lengths(tree))
  return tree_obj.expect(tree, v[0][..., 0])


def _data_tree(tree: TreeInstance) -> TreeInstance:
  """The tree with ρ replaced by the data's conditionals (SFT-then-RL: the RL stage's ρ = d)."""
  log_d = tree_obj.data_log_policy(tree)
  levels = tuple(dataclasses.replace(lv, reference=jnp.exp(ld))
                 for lv, ld in zip(tree.levels, log_d))
  return dataclasses.replace(tree, levels=levels)


def _quantities(tree: TreeInstance) -> tuple[dict, dict]:
  rho = reference_log_probs(tree)
  star = bellman.optimal_policy(tree)
  data = tree_obj.data_log_policy(tree)
  mean = sft.token_mean_optimum(tree)
  values, _ = bellman.soft_bellman(tree)
  q = {
      "sft_loss_data": tree_obj.sft_optimum_loss(tree),
      "sft_loss_reference": tree_obj.sft_loss(tree, rho),
      "sft_loss_rl": tree_obj.sft_loss(tree, star),
      "c1": bellman.c1(tree),
      "c1_sft_then_rl": bellman.c1(_data_tree(tree)),
      "rl_value": tree.beta * atomic.expect(leaf_instance(tree),
                                            atomic.log_partition(leaf_instance(tree))),
      "soft_value": tree.beta * tree_obj.expect(tree, values[0][..., 0]),
      "reward_reference": tree_obj.reward(tree, rho),
      "reward_rl": tree_obj.reward(tree, star),
      "reward_data": tree_obj.reward(tree, data),
      "regularized_reward_data": tree_obj.regularized_reward(tree, data),
      "kl_rl_reference": tree_obj.expect(tree, tree_obj.kl(tree, star)),
      "kl_data_rl": tree_obj.sft_excess(tree, star),
      "token_mean_excess": sft.token_mean_excess(tree),
      "expected_length_data": expected_length(tree, data),
      "expected_length_token_mean": expected_length(tree, mean),
      "expected_length_reference": expected_length(tree, rho),
      "expected_length_rl": expected_length(tree, star),
  }
  points = [fixed_points.closed_form_fixed_point(tree, c) for c in fixed_points.CONSTRUCTS]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *points)

  def report(log_pi):  # vmapped over the constructs: one compile of the regret's solver
    out = fixed_points.fixed_point_report(tree, log_pi)
    out["expected_length"] = expected_length(tree, log_pi)
    return {k: out[k] for k in FIXED_POINT_FIELDS}

  rows = jax.vmap(report)(stacked)
  fixed = {c: {k: v[i] for k, v in rows.items()} for i, c in enumerate(fixed_points.CONSTRUCTS)}
  return q, fixed


# Kept on disk: a warm `check` of a tree file neither traces nor lowers it.
_QUANTITIES = exported_jit(_quantities, f"{__name__}._quantities")


def tree_quantities(tree: TreeInstance) -> tuple[dict, dict]:
  """({name: float} as :data:`TREE_QUANTITY_DOCS`, {construct: {field: float}} of the G4 fixed
  points, fields :data:`FIXED_POINT_FIELDS`)."""
  q, fixed = _QUANTITIES(tree)
  return ({k: float(q[k]) for k in TREE_QUANTITY_DOCS},
          {c: {k: float(v) for k, v in row.items()} for c, row in fixed.items()})


def tree_shape(tree: TreeInstance) -> dict:
  """prompts, vocabulary, maximum length, nodes and leaves of an unbatched tree (JSON-ready)."""
  from_levels = lambda key: int(np.sum([np.asarray(getattr(lv, key)).sum() for lv in tree.levels]))
  return {"prompts": int(np.asarray(tree.prompt_weights).shape[0]), "vocab": tree.vocab_size,
          "max_length": tree.depth, "nodes": from_levels("node"), "leaves": from_levels("leaf"),
          "beta": float(tree.beta)}
