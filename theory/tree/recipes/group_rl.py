r"""GRPO, Dr.GRPO, DAPO and PPO-clip on prefix trees: exact expected fields and sampled estimators.

A trainer draws a group o_1, …, o_G ∼ π_old(·|x), gives response i the weight w_i = Â_i n_i
(advantage × length normaliser, :mod:`.advantages`, :mod:`..groups`) and minimises, per token,

.. math:: -\sum_i n_i \sum_t \min\big(\rho_{i,t}\hat A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\varepsilon_{lo},
          1+\varepsilon_{hi})\hat A_i\big) + c_{KL} \sum_i n_i \sum_t k(a_{i,t}|s_{i,t}),
          \qquad \rho_{i,t} = \frac{\pi(a_{i,t}|s_{i,t})}{\pi_{old}(a_{i,t}|s_{i,t})}

(the KL loss aggregated in the same mode, as verl's actor does), or puts −c_KL Σ_t k1_t into the
reward before the advantage (``k1_reward``). The ascent direction of one token is
1_stable ρ Â n ∇log π(a|s) with 1_stable = 0 iff (Â > 0, ρ > 1 + ε_hi) or (Â < 0, ρ < 1 − ε_lo).

Exact field. Per edge (s, a), taking the group in expectation under π_old (exchangeability, G5):

.. math:: C(s,a) = P_{old}(s)\,\pi(a|s)\,\big[1\{\rho \le 1+\varepsilon_{hi}\}\,Q^{h^+}_{old}(s,a)
          - 1\{\rho \ge 1-\varepsilon_{lo}\}\,Q^{h^-}_{old}(s,a)\big]
          - c_{KL}\,P_{old}(s)\,\pi_{old}(a|s)\,Q^{\nu}_{old}(s,a)\,\partial_{\log\pi} k(s,a)

with h^± = G E[w_1^± | o_1 = y], ν = G E[n_1 | o_1 = y] (leaf weights) and Q_old their expectations
to go under π_old; the field at node s is Σ_a C(s, a) ∇_{θ_s} log π(a|s) = C(s,·) − (Σ_a C) π(·|s)
(:func:`~..sampling.pullback`). At θ = θ_old (the default: ``theta_old=None``) the ratio is 1, the
clip is inactive and the policy part is :func:`~..fields.reinforce_field` with the leaf weight
h⁺ − h⁻ (one pass; in closed form without std and with an own-length normaliser,
:func:`~.advantages.net_leaf_weights`); for θ ≠ θ_old (inner steps on one batch) the per-token
clip masks are exact. The KL loss gradient is differentiated at θ with the samples from π_old
held fixed (:mod:`..kl`, G3); with ν ≡ 1 it is :func:`~..kl.loss_kl_field`. Dynamic sampling
multiplies by :func:`~.advantages.dynamic_sampling_factor`.

Estimator: ``n`` independent calls, each drawing one group of G per prompt from π_old
(:func:`~..sampling.sample_leaves`), forming w_i and n_i from the drawn rewards and lengths, summing
the per-token coefficients edge by edge (:func:`~..sampling.leaf_histogram`,
:func:`~..sampling.subtree_totals`) and pulling them back to the logits; the mean over the calls is
returned. Not modelled: PPO's value-clip and dual-clip (verl ``clip_ratio_c``), DAPO's overlong
reward shaping (use a length reward rule on the tree), a per-token critic.

References: GRPO: Shao et al., arXiv 2402.03300 §4.1 (verl ``compute_grpo_outcome_advantage``,
``compute_policy_loss``, ``kl_penalty(..., "low_var_kl")``, ``agg_loss("seq-mean-token-mean")``);
Dr.GRPO: Liu et al., arXiv 2503.20783 §3 (verl ``norm_adv_by_std_in_grpo=False``,
``agg_loss("seq-mean-token-sum-norm")``); DAPO: Yu et al., arXiv 2503.14476 §3.1–3.3 (clip-higher,
dynamic sampling, token-level loss; verl ``clip_ratio_low/high``, ``agg_loss("token-mean")``);
PPO: Schulman et al., arXiv 1707.06347 (verl ``compute_policy_loss``); TRL ``GRPOTrainer``
(``loss_type`` "grpo", "dr_grpo", "dapo"); research/fusion-methods.md §3, Rules 3–4.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ...recipes.base import ConfigError
from ...recipes.options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_positive,
)
from ..atomic import unflat_slots
from ..fields import expected_to_go, weighted
from ..groups import LOSS_AGG_MODES
from ..instance import TreeInstance, support
from ..kl import token_kl_slope
from ..objectives import log_ratios
from ..policy import Levels, flat_slots, leaf_lengths, log_reach, policy_log_probs
from ..sampling import leaf_histogram, pullback, sample_leaves, subtree_totals
from .advantages import (
  dynamic_sampling_factor,
  leaf_value,
  leaf_weights,
  needed_levels,
  needed_reward_classes,
  net_leaf_weights,
  sampled_weights,
  shaped_rewards,
)
from .base import TreeRecipe

__all__ = ["KL_FORMS", "LOSS_KL_ESTIMATORS", "GroupRLConfig", "TreePPOConfig", "fill_levels",
           "group_rl_field", "group_rl_estimate", "GRPO", "DR_GRPO", "DAPO", "PPO_CLIP"]

KL_FORMS = ("none", "k1_reward", "k1_loss", "k2_loss", "k3_loss", "k3_clamped_loss")
LOSS_KL_ESTIMATORS = {"k1_loss": "k1", "k2_loss": "k2", "k3_loss": "k3",
                      "k3_clamped_loss": "k3_clamped"}


def _check_common(cfg) -> None:
  require_int(cfg, "group_size", 1)
  require_choice(cfg, "loss_agg_mode", LOSS_AGG_MODES)
  require_positive(cfg, "clip_low")
  require_positive(cfg, "clip_high")
  require_finite(cfg, "kl_coef")
  require_choice(cfg, "kl_form", KL_FORMS)
  require_int(cfg, "max_length", 1, optional=True)
  require_int(cfg, "levels", 1, optional=True)


@dataclasses.dataclass(frozen=True)
class GroupRLConfig:
  """GRPO-style group recipes on trees (defaults: GRPO as in verl's GRPO example).

  Attributes:
    group_size: G ≥ 1 responses per prompt (rollout.n; 8 as the fusion repos' GRPO runs,
      DeepSeekMath used 64).
    use_std: divide Â by the group's unbiased std plus ``eps`` (verl ``norm_adv_by_std_in_grpo``).
    eps: the std offset (> 0; verl 1e-6).
    loss_agg_mode: one of :data:`~..groups.LOSS_AGG_MODES` (verl ``loss_agg_mode``).
    clip_low, clip_high: ε_lo, ε_hi > 0 (verl ``clip_ratio_low/high``; GRPO 0.2/0.2).
    kl_coef: c_KL (finite; DeepSeekMath β = 0.04 [UNCONFIRMED in fusion-methods.md]).
    kl_form: one of :data:`KL_FORMS`: ``k1_reward`` (−c k1 per token in the reward, before the
      advantage), ``k1_loss``/``k2_loss``/``k3_loss`` (in the loss, aggregated like the policy
      loss), ``k3_clamped_loss`` (verl ``low_var_kl``, GRPO's default), ``none``.
    dynamic_sampling: DAPO's filter of all-equal groups (needs G ≥ 2 and no KL term). Its
      step-size factor 1/E_w[q] is over all the tree's prompts: the field of a subset of the
      prompts is not the subset's rows of the whole field.
    max_length: T of ``seq-mean-token-sum-norm`` (default: the tree's number of levels).
    levels: static level count of the exact enumeration (default: read from the concrete tree;
      set it, e.g. with :func:`fill_levels`, before tracing the field under jit).
    reward_classes: static bound on the distinct rewards per prompt, read with ``levels``
      (:func:`~.advantages.needed_reward_classes`; None where it is not used). With
      ``token-mean`` and two rewards at most, the exact field convolves the others' successes
      and total length instead of enumerating multisets (:mod:`..token_mean_groups`), which
      makes DAPO's G = 16 exact on any tree. Like ``levels``, a value set by hand must be at
      least the tree's count (not checked: counting costs ~1 s on a tree of 5.7 M leaves).
  """

  group_size: int = 8
  use_std: bool = True
  eps: float = 1e-6
  loss_agg_mode: str = "seq-mean-token-mean"
  clip_low: float = 0.2
  clip_high: float = 0.2
  kl_coef: float = 0.04
  kl_form: str = "k3_clamped_loss"
  dynamic_sampling: bool = False
  max_length: int | None = None
  levels: int | None = None
  reward_classes: int | None = None

  def __post_init__(self):
    _check_common(self)
    require_int(self, "reward_classes", 1, optional=True)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_bool(self, "dynamic_sampling")
    if self.dynamic_sampling and self.group_size < 2:
      raise ConfigError(f"GroupRLConfig.group_size is {self.group_size}, expected >= 2 with "
                        f"dynamic_sampling (a group of one never has two rewards)")
    if self.dynamic_sampling and self.kl_form != "none" and self.kl_coef != 0:
      raise ConfigError(f"GroupRLConfig.kl_form is {self.kl_form!r}, expected 'none' (or "
                        f"kl_coef 0) with dynamic_sampling (a KL term with it is not modelled)")

  @property
  def advantage(self) -> str:
    return "group"


@dataclasses.dataclass(frozen=True)
class TreePPOConfig:
  """PPO-clip per token with the exact prompt value as baseline: Â_i = r_i − V_old(x).

  Attributes:
    group_size: responses per prompt in one batch (≥ 1; 1 as the atomic PPO recipe).
    loss_agg_mode: one of :data:`~..groups.LOSS_AGG_MODES` (verl's default ``token-mean``).
    clip_low, clip_high: ε_lo, ε_hi > 0 (Schulman et al.: 0.2).
    kl_coef, kl_form: the KL term (:class:`GroupRLConfig`; default none).
    max_length, levels: as :class:`GroupRLConfig`.
  """

  group_size: int = 1
  loss_agg_mode: str = "token-mean"
  clip_low: float = 0.2
  clip_high: float = 0.2
  kl_coef: float = 0.0
  kl_form: str = "none"
  max_length: int | None = None
  levels: int | None = None

  def __post_init__(self):
    _check_common(self)

  advantage = property(lambda self: "value")
  reward_classes = property(lambda self: None)
  use_std = property(lambda self: False)
  eps = property(lambda self: 1e-6)
  dynamic_sampling = property(lambda self: False)


def fill_levels(tree: TreeInstance, cfg):
  """``cfg`` with ``levels`` (and ``reward_classes``, where the config has it) read from a
  concrete tree (what the exact field enumerates), unless set already. The group recipes'
  ``prepare`` hook.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = fill_levels(tree, DAPO.config)
    >>> cfg.levels, cfg.reward_classes  # (reward, length) pairs (1, 1), (1, 2), (0, 2); rewards 0, 1
    (3, 2)
  """
  if cfg.levels is None:
    cfg = dataclasses.replace(cfg, levels=needed_levels(tree, cfg))
  if isinstance(cfg, GroupRLConfig) and cfg.reward_classes is None:
    cfg = dataclasses.replace(cfg, reward_classes=needed_reward_classes(tree, cfg))
  return cfg


def _policies(tree, theta, theta_old):
  log_pi = policy_log_probs(tree, theta)
  log_old = log_pi if theta_old is None else policy_log_probs(tree, theta_old)
  return log_pi, log_old


def _clip_masks(tree, log_pi, log_old, cfg, active: bool):
  """Per level (keep⁺, keep⁻, ratio): 1{ρ ≤ 1 + ε_hi}, 1{ρ ≥ 1 − ε_lo}, ρ = π/π_old per slot."""
  out = []
  for lv, lp, lo in zip(tree.levels, log_pi, log_old):
    sup = support(lv)
    ratio = jnp.exp(jnp.where(sup, jnp.where(sup, lp, 0.0) - jnp.where(sup, lo, 0.0), 0.0))
    if active:
      out.append((ratio <= 1.0 + cfg.clip_high, ratio >= 1.0 - cfg.clip_low, ratio))
    else:
      out.append((jnp.ones_like(sup), jnp.ones_like(sup), ratio))
  return out


def _kl_slopes(tree, log_pi, cfg) -> Levels | None:
  """∂k/∂log π(a|s) at θ for a KL loss, or None when there is none."""
  if cfg.kl_form not in LOSS_KL_ESTIMATORS or cfg.kl_coef == 0:
    return None
  est = LOSS_KL_ESTIMATORS[cfg.kl_form]
  return tuple(token_kl_slope(k, est) for k in log_ratios(tree, log_pi))


def _finish(tree, log_old, cfg, g: Levels) -> Levels:
  if cfg.dynamic_sampling:
    # The distinct rewards where counted; else cfg.levels, which counts (reward, length) pairs
    # or rewards: at least the distinct rewards.
    rewards = cfg.reward_classes if cfg.reward_classes is not None else cfg.levels
    factor = dynamic_sampling_factor(tree, log_old, cfg.group_size, rewards)
    g = tuple(factor * a for a in g)
  return weighted(tree, g)


@compiled("cfg", prepare=fill_levels)
def group_rl_field(tree: TreeInstance, theta: Levels, cfg, theta_old: Levels | None = None
                   ) -> Levels:
  r"""The exact expected ascent field of a group recipe (module docstring), prompt weights included.

  Args:
    tree: the tree.
    theta: per-level logits θ.
    cfg: :class:`GroupRLConfig` or :class:`TreePPOConfig`.
    theta_old: the rollout logits (default θ: on-policy, the clip inactive).

  Returns:
    Per-level ascent field [X, N_t, k].

  Raises:
    InfeasibleGroupEnumeration: the group's enumeration is beyond its limit (use the estimator).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = dataclasses.replace(DR_GRPO.config, group_size=4)
    >>> [round(v, 12) for v in group_rl_field(tree, initial_logits(tree), cfg)[0][0, 0].tolist()]
    [-0.1875, 0.1875]
  """
  log_pi, log_old = _policies(tree, theta, theta_old)
  rewards = shaped_rewards(tree, log_old, cfg.kl_coef, cfg.kl_form)
  reach = log_reach(tree, log_old)
  if theta_old is None:  # on-policy: no clip is active, so one pass on h⁺ − h⁻ (linearity)
    net, norm = net_leaf_weights(tree, log_old, rewards, cfg)
    q_net, _ = expected_to_go(tree, log_old, unflat_slots(tree, net))
    coeff = tuple(jnp.exp(r)[..., None] * jnp.exp(lp) * q
                  for r, lp, q in zip(reach, log_pi, q_net))
  else:
    pos, neg, norm = leaf_weights(tree, log_old, rewards, cfg)
    q_pos, _ = expected_to_go(tree, log_old, unflat_slots(tree, pos))
    q_neg, _ = expected_to_go(tree, log_old, unflat_slots(tree, neg))
    masks = _clip_masks(tree, log_pi, log_old, cfg, True)
    coeff = tuple(jnp.exp(r)[..., None] * jnp.exp(lp) * (jnp.where(kp, qp, 0.0)
                                                          - jnp.where(kn, qn, 0.0))
                  for r, lp, qp, qn, (kp, kn, _) in zip(reach, log_pi, q_pos, q_neg, masks))
  slopes = _kl_slopes(tree, log_pi, cfg)
  if slopes is not None:  # the KL loss's edge coefficients join the pullback (it is linear)
    q_norm, _ = expected_to_go(tree, log_old, unflat_slots(tree, norm))
    coeff = tuple(c - cfg.kl_coef * jnp.exp(r)[..., None] * jnp.exp(lo) * qn * k
                  for c, r, lo, qn, k in zip(coeff, reach, log_old, q_norm, slopes))
  return _finish(tree, log_old, cfg, pullback(tree, log_pi, coeff))


@compiled("cfg", "n", prepare=fill_levels)
def group_rl_estimate(tree: TreeInstance, theta: Levels, cfg, key: jax.Array, n: int,
                      theta_old: Levels | None = None) -> Levels:
  r"""The mean of ``n`` sampled estimator calls (one group of G per prompt each), as a trainer.

  Args:
    tree: the tree.
    theta: per-level logits θ.
    cfg: :class:`GroupRLConfig` or :class:`TreePPOConfig`.
    key: PRNG key.
    n: number of calls (static).
    theta_old: the rollout logits (default θ).

  Returns:
    Per-level ascent estimate [X, N_t, k], prompt weights included.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = dataclasses.replace(DR_GRPO.config, group_size=4)
    >>> g = group_rl_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4096)
    >>> bool(jnp.all(jnp.abs(g[0] - jnp.array([[[-0.1875, 0.1875]]])) < 0.01))
    True
  """
  log_pi, log_old = _policies(tree, theta, theta_old)
  size = cfg.group_size
  n_x = tree.prompt_weights.shape[-1]
  idx = sample_leaves(tree, log_old, key, n * size)
  rewards = shaped_rewards(tree, log_old, cfg.kl_coef, cfg.kl_form)
  lengths = flat_slots(leaf_lengths(tree))
  take = lambda a: jnp.take_along_axis(a, idx, axis=-1).reshape(n_x, n, size)
  t_max = float(tree.depth if cfg.max_length is None else cfg.max_length)
  w, norm = sampled_weights(take(rewards), take(lengths), leaf_value(tree, log_old, rewards), cfg,
                            t_max)
  w, norm = w.reshape(n_x, n * size) / n, norm.reshape(n_x, n * size) / n
  tot_pos = subtree_totals(tree, leaf_histogram(tree, idx, jnp.maximum(w, 0.0)))
  tot_neg = subtree_totals(tree, leaf_histogram(tree, idx, jnp.maximum(-w, 0.0)))
  masks = _clip_masks(tree, log_pi, log_old, cfg, theta_old is not None)
  coeff = tuple(ratio * (jnp.where(kp, tp, 0.0) - jnp.where(kn, tn, 0.0))
                for tp, tn, (kp, kn, ratio) in zip(tot_pos, tot_neg, masks))
  slopes = _kl_slopes(tree, log_pi, cfg)
  if slopes is not None:  # one pullback for both terms (it is linear in the coefficients)
    tot_norm = subtree_totals(tree, leaf_histogram(tree, idx, norm))
    coeff = tuple(c - cfg.kl_coef * tn * k for c, tn, k in zip(coeff, tot_norm, slopes))
  return _finish(tree, log_old, cfg, pullback(tree, log_pi, coeff))


_REF_GRPO = ("Shao et al., arXiv 2402.03300 §4.1; verl core_algos.compute_grpo_outcome_advantage, "
             "compute_policy_loss, kl_penalty(low_var_kl), agg_loss(seq-mean-token-mean)")

GRPO = TreeRecipe(
    "grpo", GroupRLConfig(), group_rl_field, group_rl_estimate,
    "group of G, Â = (r − mean)/(std + ε), per-sequence token mean 1/(G|o|), token clip 0.2, "
    "clamped k3 KL loss (0.04)", _REF_GRPO,
    prepare=fill_levels)
DR_GRPO = TreeRecipe(
    "dr_grpo", GroupRLConfig(use_std=False, loss_agg_mode="seq-mean-token-sum-norm",
                             kl_coef=0.0, kl_form="none"),
    group_rl_field, group_rl_estimate,
    "group of G, Â = r − mean (no std), constant normaliser 1/(G T), token clip 0.2, no KL",
    "Liu et al., arXiv 2503.20783 §3; verl norm_adv_by_std_in_grpo=False, "
    "agg_loss(seq-mean-token-sum-norm); TRL loss_type='dr_grpo'",
    prepare=fill_levels)
DAPO = TreeRecipe(
    "dapo", GroupRLConfig(group_size=16, use_std=True, loss_agg_mode="token-mean", clip_low=0.2,
                          clip_high=0.28, kl_coef=0.0, kl_form="none", dynamic_sampling=True),
    group_rl_field, group_rl_estimate,
    "group of 16, Â = (r − mean)/(std + ε), token mean 1/Σ|o| over the group, clip-higher "
    "0.2/0.28, dynamic sampling (as a step factor), no KL",
    "Yu et al., arXiv 2503.14476 §3.1-3.3 (G = 16, ε 0.2/0.28 [UNCONFIRMED in "
    "fusion-methods.md]); verl clip_ratio_low/high, agg_loss(token-mean); TRL loss_type='dapo'",
    prepare=fill_levels)
PPO_CLIP = TreeRecipe(
    "ppo_clip", TreePPOConfig(), group_rl_field, group_rl_estimate,
    "Â = r − V_old(x) (exact prompt value), per-token ratio clip 0.2, token-mean, no KL",
    "Schulman et al., arXiv 1707.06347; verl core_algos.compute_policy_loss, agg_loss(token-mean)",
    prepare=fill_levels)
