r"""SRFT on trees (Fu et al., arXiv 2506.19767): entropy-weighted SFT, demonstration RL, self RL.

Per prompt: n_on on-policy responses and one demonstration y* ∼ d in a mixed group
(fusion-methods.md §5, as the atomic :mod:`...recipes.srft`):

- SFT on the demonstration with weight sft_coef · sg(e^{−H}) per token;
- demonstration RL with behaviour probability 1: each token's ratio is π(y*_t|y*_<t), clipped per
  token at 1 ± ε with the mixed-group advantage Â_off (std over G_on ∪ G_off): a token gives no
  gradient when Â_off < 0 and π_t < 1 − ε (or Â_off > 0 and π_t > 1 + ε, which never happens);
  optional LUFFY shaping (``shaping_gamma``, as HPT's re-implementation);
- self RL on the on-policy responses: weight rl_pos_coef · sg(e^{+H}) on successes, −1 on
  failures (mean over the n_on samples). The sign of H in the positive weight is [UNCONFIRMED]
  against the paper (the HPT re-implementation uses e^{+H}, and so do we).

The entropy H (``entropy_weighting``): ``sequence_mean`` (default: HPT's re-implementation, the only
public code, uses the per-sequence mean over tokens of the token entropies H(π(·|y_<t)), detached,
the same weight for every token of the sequence) or ``token`` (each token weighted by its own
node's entropy). Which one the paper means per token is [UNCONFIRMED]; at depth 1 both are the
atomic recipe's H(π(·|x)).

Exact field (one prompt, ascent; H̄(y) = (1/|y|)Σ_t H_t or H_t per token):

.. math:: g = \sum_{y^*} d(y^*) \sum_t \big[c_s e^{-\bar H} + b_{off}(y^*, t)\,\varphi(\pi_t)\big]
          (e_{y^*_t} - \pi_{y^*_{<t}}) + \sum_y \pi(y) \sum_t \big(c_p e^{\bar H} 1^+(y)
          - 1^-(y)\big)(e_{y_t} - \pi_{y_{<t}}) + c_H \sum_s P_\pi(s) \nabla H_s

with b_off(y*, t) = E[Â_off⁺ | y*] 1{π_t ≤ 1 + ε} − E[Â_off⁻ | y*] 1{π_t ≥ 1 − ε} (the atomic
enumeration on the leaf set), or E[Â_off | y*] without the clip.

References: fusion-methods.md §5 and §11; TsinghuaC3I/Unify-Post-Training ``mix_core_alg.py::
compute_token_on_off_policy_srft_loss`` (``masked_mean(entropy, mask, axis=-1)``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ...recipes.demonstrations import (
  mixed_group_sample,
  mixed_off_advantage,
  mixed_off_advantage_parts,
  shaping_weight,
)
from ...recipes.groups import clip_weight
from ...recipes.options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_positive,
)
from ..atomic import leaf_instance, leaf_policy
from ..fields import weighted
from ..instance import TreeInstance, support
from ..policy import Levels, flat_slots, gather_rows, policy_log_probs
from ..sampling import pullback, sample_leaves
from .base import TreeRecipe
from .continuations import fill_reward_levels, leaf_rewards, levels_for, sample_data
from .hints import (
  Paths,
  add_levels,
  edge_log_probs,
  entropy_field,
  entropy_rows,
  leaf_data,
  leaf_edge_totals,
  leaf_paths,
  mean_over_calls,
  node_entropies,
  path_gather,
  path_pullback,
  path_visits,
  reach_probs,
  scale_levels,
)

__all__ = ["TreeSRFTConfig", "tree_srft_field", "tree_srft_estimate", "TREE_SRFT",
           "ENTROPY_WEIGHTINGS", "path_entropy", "mean_path_entropy"]

ENTROPY_WEIGHTINGS = ("sequence_mean", "token")


@dataclasses.dataclass(frozen=True)
class TreeSRFTConfig:
  """SRFT on trees (defaults as the atomic :class:`~...recipes.srft.SRFTConfig`).

  Attributes:
    n_on: on-policy samples per prompt (≥ 1).
    sft_coef: weight before e^{−H} (finite); rl_pos_coef: weight before e^{+H} (finite).
    use_std, eps: std normalisation of the mixed group, its offset (> 0).
    demo_clip: ε > 0 of the per-token clip on the demo ratio, or None.
    shaping_gamma: LUFFY shaping γ > 0 on the demo RL term, or None.
    entropy_coef: entropy bonus (finite).
    success_threshold: y is positive iff r > threshold (finite).
    entropy_weighting: ``sequence_mean`` (HPT's code) or ``token``.
    reward_levels: distinct rewards per prompt for the std enumeration (None: from the tree).
  """
  n_on: int = 7
  sft_coef: float = 0.5
  rl_pos_coef: float = 0.1
  use_std: bool = True
  eps: float = 1e-6
  demo_clip: float | None = 0.2
  shaping_gamma: float | None = None
  entropy_coef: float = 0.0
  success_threshold: float = 0.0
  entropy_weighting: str = "sequence_mean"
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_on", 1)
    require_finite(self, "sft_coef")
    require_finite(self, "rl_pos_coef")
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_positive(self, "demo_clip", optional=True)
    require_positive(self, "shaping_gamma", optional=True)
    require_finite(self, "entropy_coef")
    require_finite(self, "success_threshold")
    require_choice(self, "entropy_weighting", ENTROPY_WEIGHTINGS)
    require_int(self, "reward_levels", 1, optional=True)


def path_entropy(tree: TreeInstance, log_pi: Levels, paths: Paths, mode: str) -> jax.Array:
  """[X, S, T] the entropy weighting each token of each leaf path gets (detached).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))
    >>> h = path_entropy(tree, log_pi, leaf_paths(tree), "token")
    >>> h.shape, round(float(h[0, 1, 0]), 6)  # [X, S, T]; H of (1/2, 1/2) = log 2
    ((1, 2, 1), 0.693147)
  """
  h = path_gather(paths, node_entropies(tree, log_pi))
  if mode == "token":
    return h
  mean = jnp.sum(h, axis=-1) / jnp.maximum(paths.length, 1)
  return jnp.where(paths.valid, mean[..., None], 0.0)


@compiled("cfg", prepare=fill_reward_levels)
def tree_srft_field(tree: TreeInstance, theta: Levels, cfg: TreeSRFTConfig) -> Levels:
  r"""Exact expected ascent field of SRFT on a tree (module formula), prompt weights included.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> g = tree_srft_field(tree, initial_logits(tree), TreeSRFTConfig(n_on=1))
    >>> [round(v, 6) for v in g[0][0, 0].tolist()]  # the atomic value
    [-0.513388, 0.513388]
  """
  log_pi = policy_log_probs(tree, theta)
  inst = leaf_instance(tree, support_only=True)  # every leaf on the support (on_support below)
  pi = jnp.exp(leaf_policy(tree, log_pi))
  d = leaf_data(tree)
  succ = ((leaf_rewards(tree) > cfg.success_threshold) & (pi > 0)).astype(pi.dtype)
  # Level by level: every coefficient is (per leaf) × (per edge), so the per-leaf parts go up the
  # tree as subtree totals and the per-edge factors (the edge's π(a|s), its node's entropy) are
  # multiplied in before one pullback.
  p_edge = tuple(jnp.where(support(lv), jnp.exp(lp), 0.0) for lv, lp in zip(tree.levels, log_pi))
  shaping = tuple(shaping_weight(p, cfg.shaping_gamma) for p in p_edge)
  m = levels_for(tree, cfg.reward_levels) if cfg.use_std else None
  if cfg.demo_clip is None:
    a_off = mixed_off_advantage(inst, pi, cfg.n_on, cfg.use_std, cfg.eps, m, on_support=True)
    demo_rl = tuple(f * t for f, t in zip(shaping, leaf_edge_totals(tree, d * a_off)))
  else:
    pos, neg = mixed_off_advantage_parts(inst, pi, cfg.n_on, cfg.use_std, cfg.eps, m,
                                         on_support=True)
    demo_rl = tuple(f * clip_weight(tp, tn, p, cfg.demo_clip, cfg.demo_clip)
                    for f, tp, tn, p in zip(shaping, leaf_edge_totals(tree, d * pos),
                                            leaf_edge_totals(tree, d * neg), p_edge))
  if cfg.entropy_weighting == "token":
    h = tuple(jnp.sum(r, axis=-1, keepdims=True) for r in entropy_rows(tree, log_pi))
    own = zip(leaf_edge_totals(tree, cfg.sft_coef * d),
              leaf_edge_totals(tree, cfg.rl_pos_coef * pi * succ),
              leaf_edge_totals(tree, pi * (1.0 - succ)), h)
    rest = tuple(sft * jnp.exp(-e) + pos_rl * jnp.exp(e) - neg_rl
                 for sft, pos_rl, neg_rl, e in own)
  else:
    h = mean_path_entropy(tree, log_pi)
    rest = leaf_edge_totals(tree, cfg.sft_coef * d * jnp.exp(-h)
                            + pi * (cfg.rl_pos_coef * jnp.exp(h) * succ - (1.0 - succ)))
  g = pullback(tree, log_pi, add_levels(demo_rl, rest))
  if cfg.entropy_coef != 0.0:  # the default has no entropy bonus: its field is not computed
    g = add_levels(g, scale_levels(cfg.entropy_coef,
                                   entropy_field(tree, log_pi, reach_probs(tree, log_pi))))
  return weighted(tree, g)


def mean_path_entropy(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  """[X, S] (1/|y|) Σ_t H(π(·|y_<t)) of every leaf y on the flat slot axis (0 off the leaves),
  top-down: the entropies above a node are its parent's plus the parent's own.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.9, 0.1]}, {(0,): 1.0},
    ...            lambda y: 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # π = ρ
    >>> [round(v, 6) for v in mean_path_entropy(tree, log_pi)[0].tolist()]  # (log 2 + H(.9))/2
    [0.693147, 0.0, 0.509115, 0.509115]
  """
  node_h = [jnp.sum(r, axis=-1) for r in entropy_rows(tree, log_pi)]
  above = jnp.zeros_like(node_h[0])
  out = []
  for t, lv in enumerate(tree.levels):
    if t > 0:
      above = jnp.where(lv.node, gather_rows(above + node_h[t - 1], lv.parent), 0.0)
    out.append(jnp.where(lv.leaf, ((above + node_h[t]) / (t + 1.0))[..., None], 0.0))
  return flat_slots(tuple(out))


@compiled("cfg", "n", prepare=fill_reward_levels)
def tree_srft_estimate(tree: TreeInstance, theta: Levels, cfg: TreeSRFTConfig, key: jax.Array,
                       n: int) -> Levels:
  r"""Mean of n sampled SRFT gradients (one mixed group per prompt each):

  .. math:: \sum_t \big[c_s e^{-\bar H(y^*)} + 1_{stable,t}\hat A_{off}\varphi(\pi_t)\big]
            \nabla\log\pi(y^*_t|\cdot) + \frac{1}{n_{on}}\sum_i\sum_t (c_p e^{\bar H(y_i)} s_i
            - (1 - s_i))\nabla\log\pi(y_{i,t}|\cdot) + \frac{c_H}{n_{on}}\sum_{i,t}\nabla H

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> g = tree_srft_estimate(tree, initial_logits(tree), TreeSRFTConfig(n_on=1),
    ...                        jax.random.PRNGKey(0), 4)
    >>> [round(v, 6) for v in g[0][0, 0].tolist()]  # mean of 4 sampled mixed groups
    [-0.657582, 0.657582]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  p_edge = jnp.exp(edge_log_probs(tree, log_pi, paths))
  h = path_entropy(tree, log_pi, paths, cfg.entropy_weighting)
  t_max = paths.node.shape[-1]
  take = lambda a, i: jnp.take_along_axis(a, jnp.broadcast_to(i[..., None], i.shape + (t_max,)),
                                          axis=1)

  def one_call(k):
    k_on, k_demo = jax.random.split(k)
    idx = sample_leaves(tree, log_pi, k_on, cfg.n_on)
    demo = sample_data(k_demo, tree, 1)
    _, adv_off = jax.vmap(lambda r, i, d: mixed_group_sample(
        r, i, d[0], cfg.use_std, cfg.eps))(rewards, idx, demo)
    ratio = take(p_edge, demo)                                         # [X, 1, T]
    adv = jnp.broadcast_to(adv_off[:, None, None], ratio.shape)
    if cfg.demo_clip is not None:
      unstable = (((adv > 0) & (ratio > 1.0 + cfg.demo_clip))
                  | ((adv < 0) & (ratio < 1.0 - cfg.demo_clip)))
      adv = jnp.where(unstable, 0.0, adv)
    coef_demo = cfg.sft_coef * jnp.exp(-take(h, demo)) + adv * shaping_weight(
        ratio, cfg.shaping_gamma)
    s = (jnp.take_along_axis(rewards, idx, axis=1) > cfg.success_threshold).astype(rewards.dtype)
    coef_on = (cfg.rl_pos_coef * jnp.exp(take(h, idx)) * s[..., None]
               - (1.0 - s[..., None])) / cfg.n_on
    g = path_pullback(tree, log_pi, paths, jnp.concatenate([idx, demo], axis=1),
                      jnp.concatenate([coef_on, coef_demo], axis=1))
    visits = path_visits(tree, paths, idx, jnp.ones(idx.shape + (t_max,)) / cfg.n_on)
    return weighted(tree, add_levels(g, scale_levels(cfg.entropy_coef,
                                                     entropy_field(tree, log_pi, visits))))

  return mean_over_calls(one_call, key, n)


TREE_SRFT = TreeRecipe(
    "srft", TreeSRFTConfig(), tree_srft_field, tree_srft_estimate,
    "0.5 e^{−H̄} SFT + per-token clipped demo RL (π_ref ≡ 1) + self RL (0.1 e^{H̄} y⁺, −1 y⁻)",
    "Fu et al. arXiv 2506.19767; HPT re-implementation mix_core_alg.py::"
    "compute_token_on_off_policy_srft_loss (fusion-methods.md §5)",
    prepare=fill_reward_levels)
