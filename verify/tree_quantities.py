"""What `check` reports for one tree file: the token-level quantities and the G1–G4 margins.

Quantities (:func:`tree_quantities`) are computed by the level recursions of theory/tree (values
bottom-up, reach top-down, KL by the chain rule). The names shared with the atomic `check`
(:data:`~nondecoupling.theory.quantities.QUANTITY_DOCS`) mean the same number on the leaf set, so
a depth-1 tree gives the atomic instance's values. Beside them: the soft Bellman value (G1), the
token-mean SFT optimum and its excess (G2), expected lengths, and the SFT loss, reward, J_β and
frontier regret of the three KL-construct fixed points (G4) with their expected length.

Margins (:func:`tree_margins`): every statement of :data:`~.tree_checks.TREE_STATEMENTS` on this
one tree; statements on a policy are evaluated at θ = the logits of π*_β (the token-level RL
optimum). A statement holds iff margin ≥ −slack.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..theory import objectives as atomic
from ..theory.statements import tokens
from ..theory.tree import bellman, fixed_points, objectives as tree_obj, sft
from ..theory.tree.atomic import leaf_instance
from ..theory.tree.fields import expected_to_go
from ..theory.tree.instance import TreeInstance
from ..theory.tree.policy import Levels, leaf_lengths, logits_of, reference_log_probs
from .tree_checks import FLOW_RESIDUAL, FLOW_STEPS, FLOW_TOL

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
_PROBE = "logits of π*_β"


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


@jax.jit
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


def tree_quantities(tree: TreeInstance) -> tuple[dict, dict]:
  """({name: float} as :data:`TREE_QUANTITY_DOCS`, {construct: {field: float}} of the G4 fixed
  points, fields :data:`FIXED_POINT_FIELDS`)."""
  q, fixed = _quantities(tree)
  return ({k: float(q[k]) for k in TREE_QUANTITY_DOCS},
          {c: {k: float(v) for k, v in row.items()} for c, row in fixed.items()})


def _statements() -> tuple:
  """(name, fn(tree, θ)) for every token-level statement, names as in TREE_STATEMENTS."""
  probe = lambda f: f
  plain = lambda f: (lambda tree, theta: f(tree))
  stat = lambda c: plain(functools.partial(tokens.fixed_point_stationary, construct=c))
  flow = lambda c: plain(functools.partial(tokens.flow_reaches_fixed_point, construct=c,
                                           tol=FLOW_RESIDUAL, max_steps=FLOW_STEPS,
                                           slack=FLOW_TOL))
  return (
      ("G1 soft_value_is_log_partition", plain(tokens.soft_value_is_log_partition)),
      ("G1 bellman_policy_is_tilt", plain(tokens.bellman_policy_is_tilt)),
      ("G2 token_sum_is_sequence_loss", probe(tokens.token_sum_is_sequence_loss)),
      ("G2 token_sum_gradient", probe(tokens.token_sum_gradient)),
      ("G2 token_mean_optimum", plain(tokens.token_mean_optimum)),
      ("G2 token_mean_stationary", plain(tokens.token_mean_stationary)),
      ("G2 token_mean_excess", plain(tokens.token_mean_excess)),
      ("G3 k1_reward_is_kl_gradient", probe(tokens.k1_reward_is_kl_gradient)),
      ("G3 k1_loss_has_no_gradient", probe(tokens.k1_loss_has_no_gradient)),
      ("G3 k2_loss_is_node_kl_gradient", probe(tokens.k2_loss_is_node_kl_gradient)),
      ("G3 k2_misses_later_reach_terms", probe(tokens.k2_misses_later_reach_terms)),
      ("G3 k2_is_kl_gradient_at_depth_1", probe(tokens.k2_is_kl_gradient_at_depth_1)),
      ("G3 k3_loss_is_forward_kl", probe(tokens.k3_loss_is_forward_kl)),
      ("G3 k3_clamped_loss_field", probe(tokens.k3_clamped_loss_field)),
      ("G3 k3_value_is_kl", probe(tokens.k3_value_is_kl)),
      ("G4 k1_reward_fixed_point", stat("k1_reward")),
      ("G4 k2_loss_fixed_point", stat("k2_loss")),
      ("G4 k3_loss_fixed_point", stat("k3_loss")),
      ("G4 k2_fixed_point_is_tilt_at_depth_1", plain(tokens.k2_fixed_point_is_tilt_at_depth_1)),
      ("G4 k1_reward_flow", flow("k1_reward")),
      ("G4 k2_loss_flow", flow("k2_loss")),
      ("G4 k3_loss_flow", flow("k3_loss")),
  )


STATEMENTS = _statements()


@jax.jit
def _verdicts(tree: TreeInstance):
  theta = logits_of(tree, bellman.optimal_policy(tree))
  return tuple(fn(tree, theta) for _, fn in STATEMENTS)


def tree_margins(tree: TreeInstance) -> dict:
  """{statement: {"lhs", "rhs", "margin", "slack", "applies", "holds", "source", "expected",
  "probe"}}; a non-finite side of an applicable statement is a failure with a ``message``."""
  out = {}
  for (name, _), v in zip(STATEMENTS, _verdicts(tree)):
    m, sl, applies = float(v.margin), float(v.slack), bool(v.applies)
    row = {"lhs": float(v.lhs), "rhs": float(v.rhs), "margin": m, "slack": sl,
           "applies": applies, "holds": None, "source": "ours", "expected": "holds",
           "probe": _PROBE}
    if applies:
      bad = [k for k in ("lhs", "rhs", "margin", "slack") if not math.isfinite(row[k])]
      row["holds"] = not bad and m >= -sl
      if bad:
        row["message"] = f"non-finite {', '.join(f'{k} = {row[k]}' for k in bad)}"
    out[name] = row
  return out


def tree_shape(tree: TreeInstance) -> dict:
  """prompts, vocabulary, maximum length, nodes and leaves of an unbatched tree (JSON-ready)."""
  from_levels = lambda key: int(np.sum([np.asarray(getattr(lv, key)).sum() for lv in tree.levels]))
  return {"prompts": int(np.asarray(tree.prompt_weights).shape[0]), "vocab": tree.vocab_size,
          "max_length": tree.depth, "nodes": from_levels("node"), "leaves": from_levels("leaf"),
          "beta": float(tree.beta)}
