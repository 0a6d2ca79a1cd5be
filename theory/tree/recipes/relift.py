r"""ReLIFT on trees (Ma et al., arXiv 2506.07527): Dr.GRPO RL plus SFT on a buffer of hard prompts.

RL step: n rollouts per prompt, Â = r − mean (no std, no clip), Σ_tokens/L_max (a sum over the
group), entropy bonus c_H on the rollouts' tokens. Every prompt whose n rollouts all fail goes,
with its demonstration y* ∼ d, to the SFT buffer; when it holds S items the newest S are trained
with the token-mean NLL (a constant normaliser, THEORY.md G2: token-sum here) and an entropy bonus
on the demonstration's tokens, at the SFT learning rate (as the atomic :mod:`...recipes.relift`).

``sft_schedule``:

- ``amortised`` (default): the field is the RL step plus the long-run SFT drift
  r_sft (B/S) w_x (1 − p_x)^n [Σ_{y*} d(y*) Σ_t (e_{y*_t} − π) + c_H' Σ_s D(s) ∇H_s] (D(s) the
  data mass through s), and the estimator adds r_sft (B/S) × (the demonstration's SFT gradient)
  when a prompt's group all failed (unbiased); the state hook passes through;
- ``buffer``: the field and estimator are the RL step only and the state hook runs the buffer
  (:mod:`...recipes.buffer`: the expected inflow B w_x (1 − p_x)^n of every step in its own slot,
  the newest S consumed, one SFT step on the taken items), as a trainer runs ReLIFT.

References: fusion-methods.md §6; TheRoadQaQ/ReLIFT ``relift/verl/verl/relift/{trainer,actor}.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.binomial import binomial_gate_probability
from ...recipes.buffer import BUFFER_ORDERS, buffer_init, buffer_push, buffer_take
from ...recipes.groups import (
  enumerated_advantage,
  mean_group_advantage,
  sample_group_advantage,
  success_stats,
)
from ...recipes.options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_non_negative,
  require_positive,
)
from ..atomic import leaf_instance, leaf_policy
from ..fields import weighted
from ..instance import TreeInstance
from ..policy import Levels, policy_log_probs
from ..sampling import sample_leaves
from .base import TreeRecipe
from .continuations import fill_reward_levels, leaf_rewards, levels_for, sample_data
from .hints import (
  add_levels,
  entropy_field,
  leaf_data,
  leaf_edge_totals,
  leaf_paths,
  leaf_pullback,
  leaf_visits,
  mean_over_calls,
  path_pullback,
  path_visits,
  policy_leaves,
  pullback_with_entropy,
  scale_levels,
)

__all__ = ["TreeReLIFTConfig", "tree_relift_field", "tree_relift_estimate", "tree_relift_init",
           "tree_relift_update", "tree_relift_rl_field", "tree_relift_sft_direction",
           "SFT_SCHEDULES", "TREE_RELIFT"]

SFT_SCHEDULES = ("amortised", "buffer")


@dataclasses.dataclass(frozen=True)
class TreeReLIFTConfig:
  """ReLIFT on trees (defaults as the atomic :class:`~...recipes.relift.ReLIFTConfig`).

  Attributes:
    n_rollouts: n ≥ 1; use_std, eps: std normalisation (eps > 0).
    rl_coef, entropy_coef: RL coefficient and entropy bonus (finite).
    batch_prompts: B ≥ 1; buffer_size: S ≥ 1 (``sft_data_size``).
    sft_lr_ratio: SFT over RL learning rate (≥ 0); sft_entropy_coef: SFT entropy bonus (finite).
    success_threshold: a rollout fails iff r ≤ threshold (finite).
    rl_aggregation: ``group_sum`` (published) or ``group_mean``.
    buffer_order: ``newest_first`` (published) or ``oldest_first``; buffer_slots: K ≥ 1.
    sft_schedule: ``amortised`` or ``buffer`` (module docstring).
    reward_levels: distinct rewards per prompt for the std enumeration (None: from the tree).
  """
  n_rollouts: int = 8
  use_std: bool = False
  eps: float = 1e-6
  rl_coef: float = 1.0
  entropy_coef: float = 0.001
  batch_prompts: int = 128
  buffer_size: int = 128
  sft_lr_ratio: float = 1.0
  sft_entropy_coef: float = 0.001
  success_threshold: float = 0.0
  rl_aggregation: str = "group_sum"
  buffer_order: str = "newest_first"
  buffer_slots: int = 256
  sft_schedule: str = "amortised"
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_rollouts", 1)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_finite(self, "rl_coef")
    require_finite(self, "entropy_coef")
    require_int(self, "batch_prompts", 1)
    require_int(self, "buffer_size", 1)
    require_non_negative(self, "sft_lr_ratio")
    require_finite(self, "sft_entropy_coef")
    require_finite(self, "success_threshold")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)
    require_choice(self, "buffer_order", BUFFER_ORDERS)
    require_int(self, "buffer_slots", 1)
    require_choice(self, "sft_schedule", SFT_SCHEDULES)
    require_int(self, "reward_levels", 1, optional=True)


def _fail_probability(tree: TreeInstance, log_pi: Levels, cfg) -> jax.Array:
  """[X] (1 − p_x)^n: all n rollouts fail."""
  pi = jnp.exp(leaf_policy(tree, log_pi))
  p = success_stats(leaf_instance(tree, support_only=True), pi, cfg.success_threshold)[0]
  return binomial_gate_probability(p, cfg.n_rollouts, 0, 0)


def tree_relift_sft_direction(tree: TreeInstance, log_pi: Levels, cfg) -> Levels:
  r"""Per prompt (no weight) Σ_{y*} d(y*) Σ_t (e_{y*_t} − π) + c_H' Σ_s D(s) ∇H_s: one item's SFT.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))
    >>> cfg = TreeReLIFTConfig(sft_entropy_coef=0.0)
    >>> tree_relift_sft_direction(tree, log_pi, cfg)[0].tolist()  # e_1 − π at the root
    [[[-0.5, 0.5]]]
  """
  d = leaf_data(tree)  # constant along each path: bottom-up sums, no path arrays
  g = leaf_pullback(tree, log_pi, d)
  visits = leaf_visits(tree, d)
  return add_levels(g, scale_levels(cfg.sft_entropy_coef, entropy_field(tree, log_pi, visits)))


@compiled("cfg", prepare=fill_reward_levels)
def tree_relift_rl_field(tree: TreeInstance, theta: Levels, cfg: TreeReLIFTConfig) -> Levels:
  """The RL step's exact field, prompt weights included.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeReLIFTConfig(n_rollouts=2, entropy_coef=0.0)
    >>> tree_relift_rl_field(tree, initial_logits(tree), cfg)[0].tolist()
    [[[-0.25, 0.25]]]
  """
  log_pi, probs, reach, pi = policy_leaves(tree, theta)  # one exp pass: π and log π
  per_leaf, _ = _rl_leaf_terms(tree, pi, cfg)
  return weighted(tree, pullback_with_entropy(tree, log_pi, probs, leaf_edge_totals(tree, per_leaf),
                                              cfg.entropy_coef * reach))


def _rl_leaf_terms(tree: TreeInstance, pi: jax.Array, cfg) -> tuple[jax.Array, jax.Array]:
  """([X, S] the RL step's coefficient per leaf, c_rl a π(y) E[Â | y]; [X] (1 − p_x)^n), for
  the leaf probabilities π(y) [X, S]."""
  inst = leaf_instance(tree, support_only=True)
  n = cfg.n_rollouts
  if cfg.use_std:
    pos, neg = enumerated_advantage(inst, pi, n - 1, levels_for(tree, cfg.reward_levels), True,
                                    cfg.eps, cfg.success_threshold)
    b = pos - neg
  else:
    b = mean_group_advantage(inst, pi, n)
  scale = cfg.rl_coef * group_scale(cfg.rl_aggregation, n)
  p = success_stats(inst, pi, cfg.success_threshold)[0]
  return scale * pi * b, binomial_gate_probability(p, n, 0, 0)


@compiled("cfg", prepare=fill_reward_levels)
def tree_relift_field(tree: TreeInstance, theta: Levels, cfg: TreeReLIFTConfig) -> Levels:
  r"""The exact field: the RL step, plus the amortised SFT drift when ``sft_schedule="amortised"``.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeReLIFTConfig(n_rollouts=2, entropy_coef=0.0, sft_entropy_coef=0.0)
    >>> tree_relift_field(tree, initial_logits(tree), cfg)[0].tolist()  # the atomic value
    [[[-0.375, 0.375]]]
  """
  if cfg.sft_schedule == "buffer":
    return tree_relift_rl_field(tree, theta, cfg)
  # The RL step plus rate × tree_relift_sft_direction, both linear in their leaf coefficients and
  # node visits: one bottom-up pullback for the sum, the entropy bonus in it.
  log_pi, probs, reach, pi = policy_leaves(tree, theta)  # one exp pass: π and log π
  rl_leaf, fail = _rl_leaf_terms(tree, pi, cfg)
  rate = (cfg.sft_lr_ratio * cfg.batch_prompts / cfg.buffer_size * fail)[:, None]
  d = leaf_data(tree)
  visits = cfg.entropy_coef * reach + cfg.sft_entropy_coef * rate * leaf_visits(tree, d)
  return weighted(tree, pullback_with_entropy(tree, log_pi, probs,
                                              leaf_edge_totals(tree, rl_leaf + rate * d), visits))


@compiled("cfg", "n", prepare=fill_reward_levels)
def tree_relift_estimate(tree: TreeInstance, theta: Levels, cfg: TreeReLIFTConfig,
                         key: jax.Array, n: int) -> Levels:
  r"""Mean of n sampled ReLIFT gradients: the group's RL gradient plus (amortised schedule)
  r_sft (B/S) × the demonstration's SFT gradient when all n rollouts failed.

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeReLIFTConfig(n_rollouts=2, entropy_coef=0.0, sft_entropy_coef=0.0)
    >>> g = tree_relift_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4)
    >>> [round(v, 6) for v in g[0][0, 0].tolist()]  # mean of 4 sampled gradients
    [-0.5, 0.5]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  t_max = paths.node.shape[-1]
  rl_scale = cfg.rl_coef * group_scale(cfg.rl_aggregation, cfg.n_rollouts)
  sft_scale = (0.0 if cfg.sft_schedule == "buffer"
               else cfg.sft_lr_ratio * cfg.batch_prompts / cfg.buffer_size)

  def one_call(k):
    k_on, k_demo = jax.random.split(k)
    idx = sample_leaves(tree, log_pi, k_on, cfg.n_rollouts)
    demo = sample_data(k_demo, tree, 1)
    r = jnp.take_along_axis(rewards, idx, axis=1)
    adv = jax.vmap(lambda v: sample_group_advantage(v, cfg.use_std, cfg.eps))(r)
    all_fail = ~jnp.any(r > cfg.success_threshold, axis=1, keepdims=True)
    coef = jnp.concatenate([rl_scale * adv / cfg.n_rollouts,
                            jnp.where(all_fail, sft_scale, 0.0)], axis=1)
    both = jnp.concatenate([idx, demo], axis=1)
    g = path_pullback(tree, log_pi, paths, both,
                      jnp.broadcast_to(coef[..., None], coef.shape + (t_max,)))
    ent_w = jnp.concatenate([jnp.full(idx.shape, cfg.entropy_coef / cfg.n_rollouts),
                             jnp.where(all_fail, sft_scale * cfg.sft_entropy_coef, 0.0)], axis=1)
    visits = path_visits(tree, paths, both, jnp.broadcast_to(ent_w[..., None],
                                                             ent_w.shape + (t_max,)))
    return weighted(tree, add_levels(g, entropy_field(tree, log_pi, visits)))

  return mean_over_calls(one_call, key, n)


def tree_relift_init(tree: TreeInstance, theta: Levels, cfg: TreeReLIFTConfig) -> jax.Array:
  """The buffer state [buffer_slots, X] (empty).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> tree_relift_init(tree, initial_logits(tree), TreeReLIFTConfig()).shape  # [slots, X]
    (256, 1)
  """
  return buffer_init(cfg.buffer_slots, tree.prompt_weights.shape[-1], tree.prompt_weights.dtype)


def tree_relift_update(tree: TreeInstance, theta_old: Levels, theta: Levels, buf: jax.Array, lr,
                       cfg: TreeReLIFTConfig):
  r"""After a step (``buffer`` schedule): the expected inflow B w_x (1 − p_x)^n (under θ_old) enters
  the buffer; if it holds S items, the newest S are taken (c_x from prompt x) and
  θ ← θ + lr r_sft Σ_x (c_x/S) (one item's SFT direction at θ). ``amortised``: passes through.

  Returns:
    (θ, buffer).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeReLIFTConfig(n_rollouts=2, entropy_coef=0.0, sft_entropy_coef=0.0,
    ...                        sft_schedule="buffer", batch_prompts=4, buffer_size=1,
    ...                        buffer_slots=4)
    >>> theta = initial_logits(tree)
    >>> buf = tree_relift_init(tree, theta, cfg)
    >>> new, buf = tree_relift_update(tree, theta, theta, buf, 0.1, cfg)  # inflow 4 (1/2)^2 = 1 = S
    >>> [round(v, 6) for v in (new[0] - theta[0])[0, 0].tolist()], float(buf.sum())  # 0.1 × SFT
    ([-0.05, 0.05], 0.0)
  """
  if cfg.sft_schedule != "buffer":
    return theta, buf
  inflow = cfg.batch_prompts * tree.prompt_weights * _fail_probability(
      tree, policy_log_probs(tree, theta_old), cfg)
  buf = buffer_push(buf, inflow)
  taken, buf, _ = buffer_take(buf, cfg.buffer_size, cfg.buffer_order)
  share = taken / cfg.buffer_size
  sft = tree_relift_sft_direction(tree, policy_log_probs(tree, theta), cfg)
  return tuple(th + lr * cfg.sft_lr_ratio * share[:, None, None] * g
               for th, g in zip(theta, sft)), buf


TREE_RELIFT = TreeRecipe(
    "relift", TreeReLIFTConfig(), tree_relift_field, tree_relift_estimate,
    "Dr.GRPO RL (Σ over n) + SFT on the demonstrations of all-failed prompts (buffer or amortised)",
    "Ma et al. arXiv 2506.07527; TheRoadQaQ/ReLIFT relift/trainer.py (fusion-methods.md §6)",
    init=tree_relift_init, update=tree_relift_update,
    prepare=fill_reward_levels)
