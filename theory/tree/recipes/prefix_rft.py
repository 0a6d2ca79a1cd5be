r"""Prefix-RFT on trees (Huang et al., arXiv 2507.01679): one prefixed rollout in a Dr.GRPO group.

Per prompt the group has n_on on-policy responses y_i ∼ π and one hybrid response: the first
l = ⌊α L⌋ tokens of a demonstration y* ∼ d (L = |y*|, so l ≤ L − 1) followed by a continuation
drawn from π below y*_{<l}. Advantages are Dr.GRPO's (Â = r − mean of the n_on + 1 rewards, no
std); the loss is summed over the group's tokens (a constant normaliser). On-policy and
continuation tokens contribute Â ∇ log π; of the l prefix tokens only the ⌈keep · l⌉ of highest
entropy H(π(·|y*_{<t})) are updated (entropy-based clipping, keep = 0.2; ties go to the earlier
token), each with Â_h φ_t (e_{y*_t} − π), φ_t = π(y*_t|y*_<t) (``prefix_form="ratio"``: behaviour
probability 1, as LUFFY's off-policy tokens) or φ_t = 1 (``"log_likelihood"``).

[UNCONFIRMED] (no public code; fusion-methods.md §9): the number of prefixed samples per group
(one here, beside n_on = 7), the law of the prefix ratio — here α ∼ Beta(κ m_t, κ(1 − m_t)) with
mean m_t on the published cosine decay from 0.95 to 0.05 over ``schedule_steps`` and κ = 2
(``ratio_mean`` fixes m directly) — whether the mask's top fraction is taken per sequence (here)
or per batch, and the prefix tokens' ratio form. With the mean-only advantage every expectation
has a closed form:

.. math:: \bar A_{on}(y) = r(y) - \frac{r(y) + (n_{on}-1)V + R_h}{n_{on}+1},\quad
          \bar A_h(y) = \frac{n_{on}}{n_{on}+1}(r(y) - V),\quad
          \bar A_{pre}(s) = \frac{n_{on}}{n_{on}+1}(V(s) - V)

with V = E_π r, V(s) = E_π[r | s] and R_h = Σ_{y*} d(y*) Σ_l P(l|y*) V(y*_{<l}) the hybrid's
expected reward; P(l | y*) = I_{(l+1)/L}(κm, κ(1−m)) − I_{l/L}(κm, κ(1−m)) (regularised incomplete
beta). Exact field (one prompt, ascent; a = 1 for ``group_sum``):

.. math:: g = a\Big[n_{on}\sum_y \pi(y)\bar A_{on}(y)\sum_t(e_{y_t} - \pi)
          + \sum_s \omega(s)\,\mathbb{E}_{\pi(\cdot|s)}[\bar A_h \nabla\log\pi(y|s)]
          + \sum_{y^*, l} d(y^*)P(l|y^*)\,\bar A_{pre}(y^*_{<l})\sum_{t<l} M_{l,t}\,\varphi_t
          (e_{y^*_t} - \pi)\Big] + c_H\sum_s P_\pi(s)\nabla H_s

with ω(s) = Σ_{y*, l} d(y*)P(l|y*) 1[s = y*_{<l}] and M the entropy mask.

References: fusion-methods.md §9; arXiv 2507.01679 (Dr.GRPO update, top-20% entropy prefix tokens,
cosine decay 95% → 5%).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.base import ConfigError
from ...recipes.groups import sample_group_advantage
from ...recipes.options import require_choice, require_finite, require_int, require_positive
from ..atomic import leaf_policy
from ..fields import weighted
from ..instance import TreeInstance
from ..policy import Levels, policy_log_probs
from ..sampling import sample_leaves
from .base import TreeRecipe
from .continuations import (
  below,
  conditional_leaf_probs,
  continuation_coefficients,
  leaf_rewards,
  sample_below,
  sample_data,
)
from .hints import (
  Paths,
  add_levels,
  all_leaves,
  edge_log_probs,
  entropy_field,
  leaf_data,
  leaf_paths,
  mean_over_calls,
  node_entropies,
  path_gather,
  path_pullback,
  path_visits,
  reach_probs,
  scale_levels,
)

__all__ = ["TreePrefixRFTConfig", "prefix_ratio_mean", "prefix_length_pmf", "top_entropy_mask",
           "tree_prefix_rft_field", "tree_prefix_rft_estimate", "TREE_PREFIX_RFT",
           "PREFIX_FORMS"]

PREFIX_FORMS = ("ratio", "log_likelihood")


@dataclasses.dataclass(frozen=True)
class TreePrefixRFTConfig:
  """Prefix-RFT on trees (published: Dr.GRPO, top 20% entropy, cosine 0.95 → 0.05).

  Attributes:
    n_on: on-policy samples beside the one hybrid (≥ 1).
    eps: unused offset kept for symmetry with the group recipes (> 0).
    ratio_high, ratio_low: the cosine schedule's start and end, 0 < low ≤ high < 1.
    schedule_steps: steps of the decay (≥ 1); step: the schedule point (≥ 0).
    ratio_mean: m in (0, 1) used instead of the schedule, or None.
    concentration: κ > 0 of the Beta law of the ratio.
    entropy_keep: fraction in (0, 1] of the prefix tokens updated (highest entropy).
    prefix_form: ``ratio`` (behaviour ≡ 1) or ``log_likelihood``.
    entropy_coef: entropy bonus on the on-policy responses (finite).
    rl_aggregation: ``group_sum`` or ``group_mean``.
  """
  n_on: int = 7
  eps: float = 1e-6
  ratio_high: float = 0.95
  ratio_low: float = 0.05
  schedule_steps: int = 500
  step: int = 0
  ratio_mean: float | None = None
  concentration: float = 2.0
  entropy_keep: float = 0.2
  prefix_form: str = "ratio"
  entropy_coef: float = 0.0
  rl_aggregation: str = "group_sum"

  def __post_init__(self):
    require_int(self, "n_on", 1)
    require_positive(self, "eps")
    require_positive(self, "ratio_low")
    require_positive(self, "ratio_high")
    if not self.ratio_low <= self.ratio_high < 1.0:
      raise ConfigError(f"TreePrefixRFTConfig.ratio_high is {self.ratio_high!r}, expected a "
                        f"number in [ratio_low, 1) = [{self.ratio_low!r}, 1)")
    require_int(self, "schedule_steps", 1)
    require_int(self, "step", 0)
    if self.ratio_mean is not None:
      require_positive(self, "ratio_mean")
      if self.ratio_mean >= 1.0:
        raise ConfigError(f"TreePrefixRFTConfig.ratio_mean is {self.ratio_mean!r}, expected a "
                          "number in (0, 1) or None")
    require_positive(self, "concentration")
    require_positive(self, "entropy_keep")
    if self.entropy_keep > 1.0:
      raise ConfigError(f"TreePrefixRFTConfig.entropy_keep is {self.entropy_keep!r}, expected a "
                        "number in (0, 1]")
    require_choice(self, "prefix_form", PREFIX_FORMS)
    require_finite(self, "entropy_coef")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)


def prefix_ratio_mean(cfg: TreePrefixRFTConfig) -> float:
  """m_t: cosine decay from ratio_high to ratio_low over schedule_steps (or ``ratio_mean``).

  Examples:
    >>> prefix_ratio_mean(TreePrefixRFTConfig()), prefix_ratio_mean(TreePrefixRFTConfig(step=250))
    (0.95, 0.5)
  """
  if cfg.ratio_mean is not None:
    return float(cfg.ratio_mean)
  t = min(cfg.step, cfg.schedule_steps) / cfg.schedule_steps
  return round(cfg.ratio_low + 0.5 * (cfg.ratio_high - cfg.ratio_low) * (1 + math.cos(math.pi * t)),
               15)


def prefix_length_pmf(paths: Paths, cfg: TreePrefixRFTConfig) -> jax.Array:
  r"""[X, S, T + 1] P(l = j | y*) = I_{(j+1)/L}(a, b) − I_{j/L}(a, b) for j < L (0 from L on).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> prefix_length_pmf(paths, TreePrefixRFTConfig(ratio_mean=0.5)).round(6).tolist()
    [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]]
  """
  m = prefix_ratio_mean(cfg)
  a, b = cfg.concentration * m, cfg.concentration * (1.0 - m)
  length = jnp.maximum(paths.length, 1).astype(jnp.float64)[..., None]
  j = jnp.arange(paths.node.shape[-1] + 1, dtype=jnp.float64)[None, None, :]
  cdf = lambda x: betainc(a, b, jnp.clip(x, 0.0, 1.0))
  pmf = cdf((j + 1.0) / length) - cdf(j / length)
  return jnp.where((j < length) & (paths.length[..., None] > 0), pmf, 0.0)


def top_entropy_mask(h: jax.Array, prefix: jax.Array, keep: float) -> jax.Array:
  """[..., T] bool: among the tokens t < prefix, the ⌈keep · prefix⌉ of highest entropy h [..., T]
  (ties to the earlier token); ``prefix`` [...] broadcasts against h's leading axes.

  Examples:
    >>> import jax.numpy as jnp
    >>> top_entropy_mask(jnp.array([0.1, 0.9, 0.5]), jnp.array(3), 0.5).tolist()  # ⌈1.5⌉ = 2
    [False, True, True]
  """
  lead = (1,) * prefix.ndim
  t = jnp.arange(h.shape[-1])
  inside = t.reshape(lead + t.shape) < prefix[..., None]
  earlier = (t[None, :] < t[:, None]).reshape(lead + (t.size, t.size))
  beats = ((h[..., None, :] > h[..., :, None])
           | ((h[..., None, :] == h[..., :, None]) & earlier))
  rank = jnp.sum(beats & inside[..., None, :], axis=-1)
  count = jnp.ceil(keep * prefix.astype(h.dtype) - 1e-9)
  return inside & (rank < count[..., None])


def _scale(cfg) -> float:
  return group_scale(cfg.rl_aggregation, cfg.n_on + 1) / (cfg.n_on + 1)


@compiled("cfg")
def tree_prefix_rft_field(tree: TreeInstance, theta: Levels, cfg: TreePrefixRFTConfig) -> Levels:
  r"""Exact expected ascent field of Prefix-RFT on a tree (module formula), prompt weights included.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> g = tree_prefix_rft_field(tree, initial_logits(tree), TreePrefixRFTConfig(n_on=1))
    >>> g[0].tolist()  # depth 1: l = 0, a plain Dr.GRPO group of 2: 2 (1/2) F_π r
    [[[-0.25, 0.25]]]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  n_on, n = cfg.n_on, cfg.n_on + 1
  pi = jnp.exp(leaf_policy(tree, log_pi))
  r = leaf_rewards(tree)
  d = leaf_data(tree)
  v = jnp.sum(pi * r, axis=-1)                                           # [X]
  under = below(tree, paths)
  q = conditional_leaf_probs(tree, log_pi, under)
  v_node = jnp.sum(q * r[:, None, :], axis=-1)                           # [X, Nn]
  pmf = prefix_length_pmf(paths, cfg)                                    # [X, S, T + 1]
  v_path = path_gather(paths, v_node)                                    # V(y*_{<t})
  r_h = jnp.sum(d[..., None] * pmf[..., :-1] * v_path, axis=(-2, -1))    # [X]
  a_on = r - (r + (n_on - 1) * v[:, None] + r_h[:, None]) / n
  a_h = (n_on / n) * (r - v[:, None])
  on = jnp.where(paths.valid, (n_on * pi * a_on)[..., None], 0.0)
  omega = path_visits(tree, paths, all_leaves(paths), d[..., None] * pmf[..., :-1])
  cont = continuation_coefficients(paths, omega, q, jnp.where(under, a_h[:, None, :], 0.0))
  h_path = path_gather(paths, node_entropies(tree, log_pi))
  t_max = paths.node.shape[-1]
  lengths = jnp.arange(t_max)                                            # l = 0 … T − 1
  mask = top_entropy_mask(h_path[:, :, None, :], jnp.broadcast_to(
      lengths, h_path.shape[:2] + (t_max,)), cfg.entropy_keep)           # [X, S, l, t]
  a_pre = (n_on / n) * (v_path - v[:, None, None])                       # [X, S, l]
  w_l = d[..., None] * pmf[..., :-1] * a_pre
  phi = (jnp.exp(edge_log_probs(tree, log_pi, paths)) if cfg.prefix_form == "ratio"
         else jnp.ones_like(h_path))
  pre = jnp.sum(w_l[..., None] * mask, axis=-2) * phi
  coef = jnp.where(paths.valid, on + cont + pre, 0.0)
  g = path_pullback(tree, log_pi, paths, all_leaves(paths), coef)
  ent = entropy_field(tree, log_pi, reach_probs(tree, log_pi))
  return weighted(tree, add_levels(scale_levels(_scale(cfg), g), scale_levels(cfg.entropy_coef,
                                                                              ent)))


@compiled("cfg", "n")
def tree_prefix_rft_estimate(tree: TreeInstance, theta: Levels, cfg: TreePrefixRFTConfig,
                             key: jax.Array, n: int) -> Levels:
  r"""Mean of n sampled Prefix-RFT gradients (one mixed group per prompt each): α ∼ Beta,
  l = ⌊αL⌋, a continuation below y*_{<l}; Â = r − mean; prefix tokens masked by entropy.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreePrefixRFTConfig(n_on=1)
    >>> est = tree_prefix_rft_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4000)
    >>> bool(jnp.allclose(est[0], tree_prefix_rft_field(tree, initial_logits(tree), cfg)[0], atol=0.02))
    True
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  under = below(tree, paths)
  p_edge = jnp.exp(edge_log_probs(tree, log_pi, paths))
  h_path = path_gather(paths, node_entropies(tree, log_pi))
  n_x, _, t_max = paths.node.shape
  m = prefix_ratio_mean(cfg)
  a, b = cfg.concentration * m, cfg.concentration * (1.0 - m)
  depth = jnp.arange(t_max)
  take = lambda arr, i: jnp.take_along_axis(arr, i[:, None, None], axis=1)[:, 0]

  def one_call(k):
    k_on, k_demo, k_ratio, k_cont = jax.random.split(k, 4)
    idx = sample_leaves(tree, log_pi, k_on, cfg.n_on)
    demo = sample_data(k_demo, tree, 1)[:, 0]
    length = jnp.take_along_axis(paths.length, demo[:, None], axis=1)[:, 0]
    alpha = jax.random.beta(k_ratio, a, b, (n_x,))
    l = jnp.minimum(jnp.floor(alpha * length).astype(jnp.int32), length - 1)
    start = jnp.take_along_axis(take(paths.node, demo), l[:, None], axis=1)
    hyb = sample_below(k_cont, tree, log_pi, under, start, 1)[:, 0]       # [X, 1]
    r = jnp.concatenate([jnp.take_along_axis(rewards, idx, axis=1),
                         jnp.take_along_axis(rewards, hyb, axis=1)], axis=1)
    adv = jax.vmap(lambda v: sample_group_advantage(v, False, cfg.eps))(r)
    mask = top_entropy_mask(take(h_path, hyb[:, 0]), l, cfg.entropy_keep)  # [X, T]
    phi = take(p_edge, hyb[:, 0]) if cfg.prefix_form == "ratio" else jnp.ones((n_x, t_max))
    prefix = depth[None, :] < l[:, None]
    coef_h = adv[:, -1:] * jnp.where(prefix, mask * phi, 1.0)              # [X, T]
    coef = jnp.concatenate([jnp.broadcast_to(adv[:, :-1, None], idx.shape + (t_max,)),
                            coef_h[:, None, :]], axis=1)
    g = path_pullback(tree, log_pi, paths, jnp.concatenate([idx, hyb], axis=1), coef)
    visits = path_visits(tree, paths, idx, jnp.ones(idx.shape + (t_max,)) / cfg.n_on)
    return weighted(tree, add_levels(scale_levels(_scale(cfg), g), scale_levels(
        cfg.entropy_coef, entropy_field(tree, log_pi, visits))))

  return mean_over_calls(one_call, key, n)


TREE_PREFIX_RFT = TreeRecipe(
    "prefix_rft", TreePrefixRFTConfig(), tree_prefix_rft_field, tree_prefix_rft_estimate,
    "n_on on-policy + one rollout continuing ⌊αL⌋ demonstration tokens (α ∼ Beta, cosine mean); "
    "Dr.GRPO; top-20% entropy prefix tokens only",
    "Huang et al. arXiv 2507.01679 (no public code; fusion-methods.md §9)")
