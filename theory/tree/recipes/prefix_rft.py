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
import numpy as np
from jax.scipy.special import betainc

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.base import ConfigError
from ...recipes.groups import sample_group_advantage
from ...recipes.options import require_choice, require_finite, require_int, require_positive
from ..fields import weighted
from ..instance import TreeInstance
from ..policy import Levels, log_reach, policy_log_probs, policy_log_probs_and_probs
from ..sampling import pullback, sample_leaves, subtree_totals
from .base import TreeRecipe
from .continuations import (
  leaf_rewards,
  sample_below,
  sample_data,
)
from .hints import (
  Paths,
  add_levels,
  edge_log_probs,
  entropy_field,
  entropy_rows,
  leaf_paths,
  mean_over_calls,
  node_entropies,
  path_gather,
  path_pullback,
  path_visits,
  reach_probs,
  scale_levels,
)
from .starts import below_expectations, length_masses, started_coefficients

__all__ = ["TreePrefixRFTConfig", "prefix_ratio_mean", "prefix_length_pmf", "prefix_length_table",
           "prefix_coefficients", "top_entropy_mask",
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
  log_pi, pi = policy_log_probs_and_probs(tree, theta)
  n_on, n = cfg.n_on, cfg.n_on + 1
  depth = len(tree.levels)
  _, v_node = below_expectations(tree, pi, tuple(lv.reward[..., None] for lv in tree.levels))
  v = v_node[0][:, 0, 0]                                                 # V = E_π r  [X]
  _, d_node = length_masses(tree)                                        # [.., T]: |y*| = 1 … T
  table = prefix_length_table(cfg, depth)
  omega = tuple(d_node[t] @ table[:, t] for t in range(depth))           # ω(s), l = depth of s
  r_h = sum(jnp.sum(o * vn[..., 0], axis=-1) for o, vn in zip(omega, v_node))  # E reward, hybrid
  reach = tuple(jnp.exp(r) for r in log_reach(tree, log_pi))
  v_b, rh_b = v[:, None, None], r_h[:, None, None]
  on = tuple(jnp.where(lv.leaf, n_on * p[..., None] * q
                       * (lv.reward - (lv.reward + (n_on - 1) * v_b + rh_b) / n), 0.0)
             for lv, p, q in zip(tree.levels, reach, pi))
  phi_edge, _ = below_expectations(tree, pi, tuple((lv.reward - v_b)[..., None]
                                                   for lv in tree.levels))
  ones = tuple(jnp.full(lv.node.shape + (1,), n_on / n, pi[0].dtype) for lv in tree.levels)
  cont, _ = started_coefficients(tree, pi, omega, ones, phi_edge)
  a_pre = tuple(o * (n_on / n) * (vn[..., 0] - v[:, None]) for o, vn in zip(omega, v_node))
  pre = prefix_coefficients(tree, pi, log_pi, a_pre, cfg)
  g = pullback(tree, log_pi, add_levels(subtree_totals(tree, on), cont, pre))
  ent = entropy_field(tree, log_pi, reach_probs(tree, log_pi))
  return weighted(tree, add_levels(scale_levels(_scale(cfg), g), scale_levels(cfg.entropy_coef,
                                                                              ent)))


def prefix_length_table(cfg: TreePrefixRFTConfig, depth: int) -> jax.Array:
  r"""[T, T + 1] P(l = j | |y*| = L) for L = 1 … T (row L − 1): :func:`prefix_length_pmf` by
  demonstration length.

  Examples:
    >>> prefix_length_table(TreePrefixRFTConfig(ratio_mean=0.5), 2).round(6).tolist()
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]
  """
  m = prefix_ratio_mean(cfg)
  a, b = cfg.concentration * m, cfg.concentration * (1.0 - m)
  length = np.arange(1, depth + 1, dtype=np.float64)[:, None]
  j = np.arange(depth + 1, dtype=np.float64)[None, :]
  cdf = lambda x: betainc(a, b, jnp.asarray(np.clip(x, 0.0, 1.0)))
  return jnp.where(jnp.asarray(j < length), cdf((j + 1.0) / length) - cdf(j / length), 0.0)


def prefix_coefficients(tree: TreeInstance, pi: Levels, log_pi: Levels, weight: Levels,
                        cfg: TreePrefixRFTConfig) -> Levels:
  r"""Per level [X, N_t, k] the prefix tokens' edge coefficients: Σ over the nodes s below the edge
  (s at depth l > t) of w(s) M_{l,t}(s) φ_t, with M the top-⌈keep·l⌉ entropy mask of the l
  ancestors of s (:func:`top_entropy_mask`) and φ_t = π(y*_t|y*_<t) (``ratio``) or 1.

  Bottom-up, each node carries the totals [T] of its subtree per ancestor depth t: cost
  nodes × k × T.

  Args:
    tree: the tree; pi, log_pi: per-level policy; weight: per level [X, N_t] w(s) =
      ω(s) Ā_pre(s); cfg: the mask's ``entropy_keep`` and ``prefix_form``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(1, 1): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> lp = reference_log_probs(tree)
    >>> w = (jnp.zeros((1, 1)), jnp.ones((1, 1)))  # w = 1 at node (1,): its prefix is token 1
    >>> cfg = TreePrefixRFTConfig(entropy_keep=1.0, prefix_form="log_likelihood")
    >>> rho = tuple(lv.reference for lv in tree.levels)
    >>> [a.tolist() for a in prefix_coefficients(tree, rho, lp, w, cfg)]
    [[[[0.0, 1.0]]], [[[0.0, 0.0]]]]
  """
  depth = len(tree.levels)
  ent = tuple(jnp.sum(r, axis=-1) for r in entropy_rows(tree, log_pi))     # H(π(·|s)) [X, N_t]
  own = [jnp.zeros(tree.levels[0].node.shape + (depth,), pi[0].dtype)]     # the root: no prefix
  path_h = None                                                           # [X, N_l, l]
  for l in range(1, depth):
    lv = tree.levels[l]
    parent_h = jnp.take_along_axis(ent[l - 1], lv.parent, axis=1)[..., None]
    path_h = (parent_h if path_h is None else jnp.concatenate(
        [jnp.take_along_axis(path_h, jnp.broadcast_to(lv.parent[..., None], lv.parent.shape
                                                      + (l - 1,)), axis=1), parent_h], axis=-1))
    mask = top_entropy_mask(path_h, jnp.full(path_h.shape[:-1], l), cfg.entropy_keep).astype(pi[0].dtype)
    own.append(jnp.pad(jnp.where(lv.node, weight[l], 0.0)[..., None] * mask,
                       ((0, 0), (0, 0), (0, depth - l))))
  out = [None] * depth
  under = None
  for t in reversed(range(depth)):
    lv = tree.levels[t]
    if under is None:
      edges = jnp.zeros(lv.reference.shape + (depth,), pi[0].dtype)
    else:
      idx = jnp.broadcast_to(lv.child.reshape(lv.child.shape[0], -1, 1),
                             (lv.child.shape[0], lv.child.shape[1] * lv.child.shape[2], depth))
      edges = jnp.where(lv.internal[..., None], jnp.take_along_axis(under, idx, axis=1).reshape(
          lv.reference.shape + (depth,)), 0.0)
    coef = edges[..., t]
    out[t] = coef * pi[t] if cfg.prefix_form == "ratio" else coef
    under = own[t] + jnp.sum(edges, axis=-2)
  return tuple(out)


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
    hyb = sample_below(k_cont, tree, log_pi, paths, start, 1)[:, 0]       # [X, 1]
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
