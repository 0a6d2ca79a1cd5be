r"""Per-response weights of the group recipes on trees: exact (per leaf) and sampled (per draw).

A response o_i of a group drawn from π_old carries the per-sequence weight w_i = Â_i n_i (advantage
times length normaliser, :mod:`..groups`). Two advantages:

- ``group``: Â_i from the group's rewards (mean-centred, optionally divided by the unbiased std
  plus ε; GRPO, Dr.GRPO, DAPO; verl ``compute_grpo_outcome_advantage``);
- ``value``: Â_i = r_i − V_old(x) with the exact value V_old(x) = E_{π_old} r of the prompt (PPO
  with an exact critic at the prompt, the outcome advantage shared by every token of the response;
  a per-token critic V(s_t) is not modelled).

The reward a response enters the advantage with is r(y), or with the KL in the reward (verl
``compute_rewards``: score − β·k1 per token, k1 from the rollout policy) the shaped
r(y) − β Σ_t k1_t = r(y) − β (log π_old(y) − log ρ(y)) (:func:`shaped_rewards`, summed top-down
edge by edge, without cancellation).

Exact (:func:`leaf_weights`): G E[w_1^± | o_1 = y] and G E[n_1 | o_1 = y] per leaf, by the
enumeration of :func:`..groups.expected_group_weights` (for ``value`` only the normaliser is
enumerated: E[w^± | y] = (r − V)^± E[n | y]). On-policy only the net weight w⁺ − w⁻ is needed,
and without std division and with a normaliser of the own response it has a closed form
(:func:`net_leaf_weights`, no enumeration). Sampled (:func:`sampled_weights`): w_i and n_i of
drawn groups.

DAPO's dynamic sampling (drop the groups whose rewards are all equal, resample until the batch is
full) only rescales the expected update: an all-equal group has Â = 0 and contributes nothing, and
a batch of informative groups holds prompt x in proportion to w_x q_x, q_x = 1 − Σ_l p_l^G the
probability that a group is informative, so the expected update is E_w[g_x] / E_w[q_x]
(:func:`dynamic_sampling_factor`; the resampling loop itself is not simulated, and a KL loss, which
all-equal groups would still feed, is not allowed with it).

References: verl ``core_algos.py::compute_grpo_outcome_advantage``, ``compute_rewards``,
``agg_loss``; DAPO (Yu et al., arXiv 2503.14476, §3.2 dynamic sampling); research/fusion-methods.md
§3 (DAPO tabular form) and the token-level addendum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ...recipes.groups import sample_group_advantage
from ..atomic import leaf_policy
from ..groups import (
  count_levels,
  expected_group_weights,
  leaf_rewards,
  length_normaliser,
  reward_level_log_masses,
  shares_lengths,
)
from ..instance import TreeInstance
from ..objectives import expect, log_ratios
from ..policy import Levels, flat_slots, leaf_lengths, leaf_log_probs, leaf_mask
from .normalisers import sampled_normalisers

__all__ = ["ADVANTAGES", "shaped_rewards", "leaf_value", "needed_levels", "needed_reward_classes", "leaf_weights",
           "has_closed_form_net_weights", "net_leaf_weights", "informative_probability",
           "dynamic_sampling_factor", "sampled_weights"]

ADVANTAGES = ("group", "value")


def shaped_rewards(tree: TreeInstance, log_old: Levels, kl_coef: float, kl_form: str
                   ) -> jax.Array:
  r"""[X, W] the reward each leaf enters the advantage with: r(y), or r(y) − β Σ_t k1_t.

  With ``kl_form == "k1_reward"``: Σ_t k1_t = Σ_t log π_old(y_t|y_<t) − log ρ(y_t|y_<t), the
  per-edge log-ratios summed top-down.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_old = (jnp.log(jnp.array([[[0.25, 0.75]]])),)
    >>> [round(v, 6) for v in shaped_rewards(tree, log_old, 1.0, "k1_reward")[0].tolist()]
    [0.693147, 0.594535]
  """
  r = leaf_rewards(tree)
  if kl_form != "k1_reward":
    return r
  k1_sum = flat_slots(leaf_log_probs(tree, log_ratios(tree, log_old)))
  return jnp.where(leaf_mask(tree), r - kl_coef * jnp.where(leaf_mask(tree), k1_sum, 0.0), 0.0)


def leaf_value(tree: TreeInstance, log_old: Levels, rewards: jax.Array) -> jax.Array:
  """[X] V_old(x) = Σ_y π_old(y) r(y) over the leaves.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.groups import leaf_rewards
    >>> leaf_value(tree, reference_log_probs(tree), leaf_rewards(tree)).tolist()
    [0.5]
  """
  p = jnp.exp(leaf_policy(tree, log_old))
  return jnp.sum(jnp.where(leaf_mask(tree), p * rewards, 0.0), axis=-1)


def needed_levels(tree: TreeInstance, cfg) -> int:
  """The static level count the exact field of ``cfg`` enumerates on a concrete tree.

  Group advantage: the distinct rewards (with lengths for ``token-mean``) of the leaves, or every
  leaf when the KL sits in the reward (shaped rewards are generically all distinct); value
  advantage: the distinct lengths for ``token-mean``, else 1.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.recipes.group_rl import GroupRLConfig
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> needed_levels(tree, GroupRLConfig())  # rewards 0 and 1
    2
  """
  if cfg.advantage == "value":
    return count_levels(tree, cfg.loss_agg_mode, jnp.zeros_like(leaf_rewards(tree)))
  if cfg.kl_form == "k1_reward":
    real = np.asarray(tree.prompt_weights) > 0
    return int(max(1, np.asarray(leaf_mask(tree)).sum(-1)[real].max()))
  return count_levels(tree, cfg.loss_agg_mode)


def needed_reward_classes(tree: TreeInstance, cfg) -> int | None:
  """The distinct rewards per prompt of a concrete tree where the exact field of ``cfg`` can use
  them (a group advantage over ``token-mean``, rewards not shaped per leaf), else None.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.recipes.group_rl import DAPO, GroupRLConfig
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> needed_reward_classes(tree, DAPO.config), needed_reward_classes(tree, GroupRLConfig())
    (2, None)
  """
  if (cfg.advantage != "group" or cfg.kl_form == "k1_reward"
      or not shares_lengths(cfg.loss_agg_mode)):
    return None
  return count_levels(tree, "seq-mean-token-mean")


def _resolve_levels(tree: TreeInstance, cfg) -> int:
  if cfg.levels is not None:
    return cfg.levels
  try:
    return needed_levels(tree, cfg)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"{type(cfg).__name__}.levels is None on a traced tree: set it from the "
                     f"concrete tree first (fill_levels)") from None


def leaf_weights(tree: TreeInstance, log_old: Levels, rewards: jax.Array, cfg):
  r"""(pos, neg, norm) [X, W]: G E[w_1⁺ | y], G E[w_1⁻ | y], G E[n_1 | y] for a group from π_old.

  Args:
    tree: the tree.
    log_old: per-level log-policy of the rollouts.
    rewards: [X, W] the rewards entering the advantage (:func:`shaped_rewards`).
    cfg: a group recipe config (``advantage``, ``group_size``, ``loss_agg_mode``, ``use_std``,
      ``eps``, ``max_length``, ``levels``).

  Returns:
    Three [X, W] arrays, 0 off the leaves.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.groups import leaf_rewards
    >>> from nondecoupling.theory.tree.recipes.group_rl import GroupRLConfig
    >>> cfg = GroupRLConfig(group_size=2, use_std=False, loss_agg_mode="seq-mean-token-sum")
    >>> pos, neg, norm = leaf_weights(tree, reference_log_probs(tree), leaf_rewards(tree), cfg)
    >>> (pos - neg).tolist(), norm.tolist()  # G (1/G)(1 − 1/G)(r − 1/2) and G (1/G)
    ([[-0.25, 0.25]], [[1.0, 1.0]])
  """
  t_max = float(tree.depth if cfg.max_length is None else cfg.max_length)
  levels = _resolve_levels(tree, cfg)
  kw = dict(group_size=cfg.group_size, mode=cfg.loss_agg_mode, use_std=cfg.use_std, eps=cfg.eps,
            max_length=t_max, levels=levels)
  if cfg.advantage == "group":
    return expected_group_weights(tree, log_old, rewards, reward_classes=cfg.reward_classes, **kw)
  _, _, norm = expected_group_weights(tree, log_old, jnp.zeros_like(rewards), **kw)
  adv = rewards - leaf_value(tree, log_old, rewards)[:, None]
  return jnp.maximum(adv, 0.0) * norm, jnp.maximum(-adv, 0.0) * norm, norm


def has_closed_form_net_weights(cfg) -> bool:
  """Whether :func:`net_leaf_weights` has a closed form for ``cfg``: no std division and a length
  normaliser of the own response only (not ``token-mean``, unless the group is one response).

  Examples:
    >>> from nondecoupling.theory.tree.recipes.registry import TREE_RECIPES
    >>> [has_closed_form_net_weights(TREE_RECIPES[n].config)
    ...  for n in ("dr_grpo", "ppo_clip", "grpo", "dapo")]
    [True, True, False, False]
  """
  own_only = not shares_lengths(cfg.loss_agg_mode) or cfg.group_size == 1
  return own_only and not (cfg.advantage == "group" and cfg.use_std)


def net_leaf_weights(tree: TreeInstance, log_old: Levels, rewards: jax.Array, cfg):
  r"""(net, norm) [X, W]: G E[w_1 | o_1 = y] (= pos − neg of :func:`leaf_weights`) and G E[n_1 | y].

  All an on-policy field needs (no clip is active at θ = θ_old). Where
  :func:`has_closed_form_net_weights`, in closed form: n_1 = n(|y|) is the own response's
  (``token-mean`` with G = 1: 1/|y|), and
  the group advantage without std is linear in the others' rewards,
  E[r_1 − (1/G) Σ_j r_j | o_1 = y] = (1 − 1/G)(r(y) − V) with V = E_{π_old} r, so

  .. math:: G\,E[w_1 \mid y] = (G - 1)\, n(|y|)\, (r(y) - V), \qquad G\,E[n_1 \mid y] = G\, n(|y|)

  (``value`` advantage: G n(|y|) (r(y) − V)). O(W) per prompt, no enumeration, so also where the
  enumeration is beyond its limit (many reward levels, the KL in the reward). Otherwise the
  enumeration of :func:`leaf_weights`.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.recipes.group_rl import GroupRLConfig
    >>> cfg = GroupRLConfig(group_size=2, use_std=False, loss_agg_mode="seq-mean-token-sum")
    >>> net, norm = net_leaf_weights(tree, reference_log_probs(tree), leaf_rewards(tree), cfg)
    >>> net.tolist(), norm.tolist()  # (G − 1)(1/G)(r − 1/2) and G (1/G)
    ([[-0.25, 0.25]], [[1.0, 1.0]])
  """
  if not has_closed_form_net_weights(cfg):
    pos, neg, norm = leaf_weights(tree, log_old, rewards, cfg)
    return pos - neg, norm
  mask = leaf_mask(tree)
  t_max = float(tree.depth if cfg.max_length is None else cfg.max_length)
  g = cfg.group_size
  lengths = flat_slots(leaf_lengths(tree))
  own = jnp.where(mask, lengths, 1)
  n_own = length_normaliser(cfg.loss_agg_mode, own, own, g, t_max)  # the group's length: G = 1
  adv = rewards - leaf_value(tree, log_old, rewards)[:, None]
  factor = g - 1 if cfg.advantage == "group" else g
  return (jnp.where(mask, factor * n_own * adv, 0.0), jnp.where(mask, g * n_own, 0.0))


def informative_probability(tree: TreeInstance, log_old: Levels, group_size: int,
                            levels: int | None = None) -> jax.Array:
  r"""[X] q_x = 1 − Σ_l p_l^G: the probability that a group of G has two different rewards.

  p_l the π_old-mass of the l-th distinct reward (:func:`..groups.reward_level_log_masses`, O(W m)
  per prompt), in log space: q = −expm1(log Σ_l e^{G log p_l}).

  Args:
    tree: the tree.
    log_old: per-level log-policy the group is drawn from.
    group_size: G.
    levels: static m ≥ the distinct rewards of every prompt (default: counted on a concrete tree).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> informative_probability(tree, reference_log_probs(tree), 3).tolist()  # 1 − 2/8
    [0.75]
  """
  if levels is None:
    try:
      levels = count_levels(tree, "seq-mean-token-mean")
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      raise ValueError("informative_probability: levels is None on a traced tree: count them on "
                       "the concrete tree first (count_levels)") from None
  log_mass = reward_level_log_masses(tree, log_old, levels)
  return -jnp.expm1(jax.nn.logsumexp(group_size * log_mass, axis=-1))


def dynamic_sampling_factor(tree: TreeInstance, log_old: Levels, group_size: int,
                            levels: int | None = None) -> jax.Array:
  """[] 1 / E_w[q_x]: the step-size factor of dynamic sampling (0 when no group is informative).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(dynamic_sampling_factor(tree, reference_log_probs(tree), 3)), 6)  # 1 / (3/4)
    1.333333
  """
  q = expect(tree, informative_probability(tree, log_old, group_size, levels))
  return jnp.where(q > 0, 1.0 / jnp.where(q > 0, q, 1.0), 0.0)


def sampled_weights(rewards: jax.Array, lengths: jax.Array, baseline: jax.Array, cfg,
                    max_length: float):
  r"""(w, n) [X, B, G]: per draw of B groups of G per prompt, w_i = Â_i n_i and n_i.

  Args:
    rewards: [X, B, G] the drawn responses' rewards (shaped if the KL is in the reward).
    lengths: [X, B, G] their lengths.
    baseline: [X] V_old(x) (read by the ``value`` advantage only).
    cfg: the recipe config.
    max_length: T.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.recipes.group_rl import GroupRLConfig
    >>> cfg = GroupRLConfig(group_size=2, use_std=False, loss_agg_mode="seq-mean-token-sum")
    >>> w, n = sampled_weights(jnp.array([[[1.0, 0.0]]]), jnp.array([[[1.0, 2.0]]]),
    ...                        jnp.zeros(1), cfg, 2.0)
    >>> w.tolist(), n.tolist()
    ([[[0.25, -0.25]]], [[[0.5, 0.5]]])
  """
  n = sampled_normalisers(cfg.loss_agg_mode, lengths, max_length)
  if cfg.advantage == "group":
    adv = jax.vmap(jax.vmap(lambda g: sample_group_advantage(g, cfg.use_std, cfg.eps)))(rewards)
  else:
    adv = rewards - baseline[:, None, None]
  return adv * n, n
