"""The token-level statements (THEORY.md G1–G4, this project's) for `verify`, over random trees.

:data:`TREE_STATEMENTS` is a tuple of :class:`~.statement.Statement` with batched ``check``
functions, like :data:`~.registry.FLOW_STATEMENTS`: ``check(batch, key)`` receives the sweep's
atomic batch (only its size is used) and the key, draws as many random trees from
:mod:`.tree_families` (every family in equal parts, one bucket, deterministic in the key and the
batch), evaluates the statement with jit + vmap (one compile per statement) and returns a
:class:`~nondecoupling.theory.verdict.Verdict` of [B] arrays. Statements on a policy use probe
logits N(0, 2²) drawn with the trees. The flow statements (G4) integrate a flow per tree, so they
run on the first ``FLOW_SAMPLE`` trees of each batch (natural-gradient geometry) and report the
others, and trees whose flow did not become stationary within ``FLOW_STEPS`` Euler steps (the k3
flow is stiff for small β), as not applying.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from ..theory.statements import tokens
from ..theory.tree.instance import TreeInstance
from ..theory.verdict import Verdict
from .statement import Statement, holds_mask
from .tree_families import TREE_BUCKET, sample_trees

__all__ = ["TREE_STATEMENTS", "FLOW_SAMPLE", "FLOW_STEPS", "CHECK_BUCKET", "trees_for_batch",
           "evaluate_trees", "tree_margins", "looks_like_tree_file"]

FLOW_SAMPLE = 16
FLOW_STEPS = 5_000
FLOW_RESIDUAL = 1e-11


CHECK_BUCKET = TREE_BUCKET  # the bucket every check draws its trees in


@functools.lru_cache(maxsize=8)
def _trees(n: int, seed: int, bucket) -> tuple[TreeInstance, tuple]:
  parts = sample_trees(n, seed, bucket)
  cat = lambda *xs: jnp.concatenate(xs, axis=0)
  trees = jax.tree.map(cat, *[p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
  probes = jax.tree.map(cat, *[p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
  return trees, probes


def trees_for_batch(batch, key) -> tuple[TreeInstance, tuple]:
  """As many random trees (and probe logits) as the batch has instances, deterministic in both."""
  n = int(np.asarray(batch.prompt_weights).shape[0])
  digest = zlib.crc32(np.asarray(jax.random.key_data(key)).tobytes()
                      + np.asarray(batch.beta, np.float64).tobytes())
  return _trees(n, int(digest), CHECK_BUCKET)


@functools.lru_cache(maxsize=None)
def _compiled(fn, with_probe: bool):
  if with_probe:
    return jax.jit(jax.vmap(fn))
  return jax.jit(jax.vmap(lambda tree, probe: fn(tree)))


def evaluate_trees(fn, trees: TreeInstance, probes: tuple, with_probe: bool) -> Verdict:
  """Verdict [B] of an unbatched statement ``fn(tree[, θ])`` on a batch of trees."""
  return _compiled(fn, with_probe)(trees, probes)


def _checker(fn, with_probe: bool):
  def check(batch, key) -> Verdict:
    trees, probes = trees_for_batch(batch, key)
    return evaluate_trees(fn, trees, probes, with_probe)
  return check


def _flow_fn(construct: str):
  return functools.partial(tokens.flow_reaches_fixed_point, construct=construct,
                           tol=FLOW_RESIDUAL, max_steps=FLOW_STEPS)


def _flow_checker(construct: str):
  fn = _flow_fn(construct)

  def check(batch, key) -> Verdict:
    trees, probes = trees_for_batch(batch, key)
    n = trees.prompt_weights.shape[0]
    k = min(n, FLOW_SAMPLE)
    head = jax.tree.map(lambda a: a[:k], (trees, probes))
    v = evaluate_trees(fn, *head, with_probe=False)
    pad = lambda a, fill: jnp.concatenate([a, jnp.full((n - k,), fill, jnp.asarray(a).dtype)])
    return Verdict(pad(v.lhs, jnp.nan), pad(v.rhs, jnp.nan), pad(v.margin, jnp.nan),
                   pad(jnp.asarray(v.applies, bool), False), pad(v.ratio, jnp.nan),
                   pad(jnp.broadcast_to(v.slack, v.margin.shape), 0.0))
  return check


_UNBATCHED: dict = {}


def _s(name, title, fn, with_probe, check=None):
  if fn is not None:
    _UNBATCHED[name] = fn if with_probe else (lambda tree, theta: fn(tree))
  return Statement(name=name, title=title, source="ours", expected="holds", kind="identity",
                   fn=None, uses_probe=with_probe,
                   check=check or _checker(fn, with_probe))


def _stationary(construct):
  return functools.partial(tokens.fixed_point_stationary, construct=construct)


TREE_STATEMENTS: tuple[Statement, ...] = (
    _s("G1 soft_value_is_log_partition", "V(root) = β log Σ_y ρ(y) e^{r(y)/β}",
       tokens.soft_value_is_log_partition, False),
    _s("G1 bellman_policy_is_tilt", "Π_t π*(y_t|y_<t) = π*_β(y)", tokens.bellman_policy_is_tilt,
       False),
    _s("G2 token_sum_is_sequence_loss", "Σ_t −log π(y_t|y_<t) averaged over d = L(π)",
       tokens.token_sum_is_sequence_loss, True),
    _s("G2 token_sum_gradient", "∇ token-sum SFT = w D(s)(π(·|s) − d(·|s)) = ∇L",
       tokens.token_sum_gradient, True),
    _s("G2 token_mean_optimum", "token-mean optimum ∝ d(y)/|y|", tokens.token_mean_optimum, False),
    _s("G2 token_mean_stationary", "∇ token-mean SFT = 0 at π_mean", tokens.token_mean_stationary,
       False),
    _s("G2 token_mean_excess", "L(π_mean) − L(d) = E_d log|y| + log E_d(1/|y|)",
       tokens.token_mean_excess, False),
    _s("G3 k1_reward_is_kl_gradient", "k1 in the reward: E[(Σk1)∇log π] = ∇KL(π‖ρ)",
       tokens.k1_reward_is_kl_gradient, True),
    _s("G3 k1_loss_has_no_gradient", "k1 in the loss: E Σ∇k1 = 0", tokens.k1_loss_has_no_gradient,
       True),
    _s("G3 k2_loss_is_node_kl_gradient", "k2 in the loss: E Σ∇k2 = P(s)∇_s KL(π(·|s)‖ρ(·|s))",
       tokens.k2_loss_is_node_kl_gradient, True),
    _s("G3 k2_misses_later_reach_terms", "∇KL − E Σ∇k2 = P(s) F_s K(s·)",
       tokens.k2_misses_later_reach_terms, True),
    _s("G3 k2_is_kl_gradient_at_depth_1", "depth 1: E Σ∇k2 = ∇KL(π‖ρ)",
       tokens.k2_is_kl_gradient_at_depth_1, True),
    _s("G3 k3_loss_is_forward_kl", "k3 in the loss: E Σ∇k3 = P(s)(π(·|s) − ρ(·|s))",
       tokens.k3_loss_is_forward_kl, True),
    _s("G3 k3_clamped_loss_field", "verl clamped k3 in the loss: closed form = autodiff",
       tokens.k3_clamped_loss_field, True),
    _s("G3 k3_value_is_kl", "E_π Σ_t k3_t = KL(π‖ρ)", tokens.k3_value_is_kl, True),
    _s("G4 k1_reward_fixed_point", "k1 in the reward: the Gibbs tilt is stationary",
       _stationary("k1_reward"), False),
    _s("G4 k2_loss_fixed_point", "k2 in the loss: π ∝ ρ e^{Q^π/β} is stationary",
       _stationary("k2_loss"), False),
    _s("G4 k3_loss_fixed_point", "k3 in the loss: π = βρ/(β + V^π − Q^π) is stationary",
       _stationary("k3_loss"), False),
    _s("G4 k2_fixed_point_is_tilt_at_depth_1", "depth 1: the k2 fixed point is the Gibbs tilt",
       tokens.k2_fixed_point_is_tilt_at_depth_1, False),
    _s("G4 k1_reward_flow", "the k1-in-reward flow stops at π*_β", _flow_fn("k1_reward"), False,
       _flow_checker("k1_reward")),
    _s("G4 k2_loss_flow", "the k2-in-loss flow stops at its closed form", _flow_fn("k2_loss"),
       False, _flow_checker("k2_loss")),
    _s("G4 k3_loss_flow", "the k3-in-loss flow stops at its closed form", _flow_fn("k3_loss"),
       False, _flow_checker("k3_loss")),
)


def _unbatched(stmt: Statement):
  """The unbatched ``fn(tree, θ)`` of a tree statement (flows included)."""
  return _UNBATCHED[stmt.name]


def _all_tree_verdicts(tree: TreeInstance, theta: tuple) -> list:
  return [_unbatched(s)(tree, theta) for s in TREE_STATEMENTS]


def tree_margins(tree: TreeInstance, seed: int = 0) -> dict:
  """{statement: {"lhs", "rhs", "margin", "slack", "applies", "holds", ...}} of G1–G4 on one tree.

  Statements on a policy use probe logits N(0, 1) (seeded); a non-finite value of an applicable
  statement is a failure with a ``message``.
  """
  rng = np.random.default_rng(seed)
  theta = tuple(jnp.asarray(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tree.levels)
  verdicts = jax.jit(_all_tree_verdicts)(tree, theta)
  out = {}
  for s, v in zip(TREE_STATEMENTS, verdicts):
    m, sl, applies = float(v.margin), float(v.slack), bool(v.applies)
    row = {"lhs": float(v.lhs), "rhs": float(v.rhs), "margin": m, "slack": sl,
           "applies": applies, "holds": None, "source": s.source, "expected": s.expected}
    if applies:
      row["holds"] = bool(holds_mask(s, np.asarray(m), np.asarray(sl)))
      bad = [k for k in ("lhs", "rhs", "margin", "slack") if not np.isfinite(row[k])]
      if bad:
        row["holds"] = False
        row["message"] = f"non-finite {', '.join(f'{k} = {row[k]}' for k in bad)}"
    out[s.name] = row
  return out


def looks_like_tree_file(obj) -> bool:
  """Whether a parsed JSON object is a tree file (a ``prompts`` list, no atomic ``data``)."""
  return isinstance(obj, dict) and isinstance(obj.get("prompts"), list) and "data" not in obj
