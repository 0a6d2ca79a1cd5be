r"""UFT on trees (Liu, Farina, Ozdaglar, arXiv 2505.16984): hints from the demonstration.

Per prompt a demonstration y* ∼ d of |y*| = L tokens is cut at num = min(max_segments, L) points
sep_l = round(l L / num), l = 0 … num (the code's ``separation``; its "steps" are our tokens); the
hint is the first h = sep_l tokens with l ∼ Binomial(num, p_t) (the code sums num Bernoulli(p_t)
draws) and the cosine schedule

.. math:: p_t = p_{low} + \tfrac12 (p_{high} - p_{low})\,(1 + \cos(\pi t / T_{hint}))
          \quad (t \le T_{hint}),\qquad 0 \text{ after}

(the code's t/T_hint; the paper writes (t + 1)/T_hint). A group of G continuations is sampled from
π below the hint node s_h = y*_{<h} and trained with the group advantage (GRPO with std,
``use_std``), the loss summed over the group's tokens (a constant normaliser); the hint tokens get
the SFT log-likelihood term sft_coef Σ_{t<h} ∇ log π(y*_t|y*_<t); the continuation tokens get the
k3-KL loss (kl_coef, ascent (ρ − π) at each visited node, THEORY.md G3) and the entropy bonus.
A hint of the whole demonstration (h = L) leaves nothing to sample: only its SFT term counts.
The schedule point is the config's ``step`` (a trainer replaces it each step), or ``hint_prob``
fixes p directly. Whether one coefficient multiplies both the KL and the hint terms in the paper is
[UNCONFIRMED]; the code's defaults (0.001 each) are used.

Exact field (one prompt, ascent; ω(s) = Σ_{y*, h} d(y*) P(h | y*) 1[s = y*_{<h}], h < |y*|):

.. math:: g = c_s \sum_{y^*} d(y^*) \sum_t P(h > t \mid y^*)(e_{y^*_t} - \pi_{y^*_{<t}})
          + a \sum_s \omega(s)\, \mathbb{E}_{y \sim \pi(\cdot|s)}\big[\bar A_s(y)\,
          \nabla\log\pi(y|s)\big] + a \sum_u V(u)\big(c_H \nabla H_u + c_{KL}(\rho_u - \pi_u)\big)

with Ā_s(y) = E[Â | y] in a group of G from π(·|s) (exact, :func:`~.starts.level_group_advantage`),
V(u) = Σ_{s ≤ u} ω(s) P_π(u|s) the expected visits, a = G (``group_sum``) or 1.

References: fusion-methods.md §7; liumy2010/UFT ``verl/utils/dataset/rl_dataset.py::__getitem__``
(hints), ``verl/workers/actor/dp_actor.py::update_policy`` (loss).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.base import ConfigError
from ...recipes.groups import sample_group_advantage
from ...recipes.options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_non_negative,
  require_positive,
)
from ..fields import weighted
from ..instance import TreeInstance
from ..policy import Levels, policy_log_probs, policy_log_probs_and_probs
from ..sampling import pullback
from .base import TreeRecipe
from .continuations import (
  fill_reward_levels,
  leaf_rewards,
  levels_for,
  sample_below,
  sample_data,
)
from .hints import (
  Paths,
  add_levels,
  entropy_field,
  flat_nodes,
  leaf_paths,
  mean_over_calls,
  node_pullback,
  path_pullback,
  path_visits,
  scale_levels,
)
from .starts import length_masses, start_advantages, started_coefficients

__all__ = ["TreeUFTConfig", "uft_hint_probability", "hint_length_pmf", "tree_uft_field",
           "tree_uft_estimate", "TREE_UFT", "continuation_node_terms"]


@dataclasses.dataclass(frozen=True)
class TreeUFTConfig:
  """UFT on trees. Defaults: liumy2010/UFT ``scripts/train.sh`` and ``ppo_trainer.yaml``.

  Attributes:
    n_rollouts: G ≥ 1 continuations per hint (published 4).
    use_std, eps: GRPO std normalisation (published: with std) and its offset (> 0).
    max_segments: at most this many cut points (≥ 1, published 5).
    p_low, p_high: the schedule's range, 0 ≤ p_low ≤ p_high ≤ 1 (published 0.05, 0.95).
    hint_steps: T_hint ≥ 1 (published 300); step: the schedule point t ≥ 0.
    hint_prob: p in [0, 1] used instead of the schedule, or None.
    sft_coef: hint log-likelihood coefficient (finite, published 0.001).
    kl_coef: k3-KL loss coefficient on the continuation (finite, published 0.001).
    entropy_coef: entropy bonus on the continuation (finite, published 0.001).
    success_threshold: success means r > threshold (finite; used by the std enumeration's levels).
    rl_aggregation: ``group_sum`` or ``group_mean``.
    reward_levels: distinct rewards per prompt for the std enumeration (None: from the tree).
  """
  n_rollouts: int = 4
  use_std: bool = True
  eps: float = 1e-6
  max_segments: int = 5
  p_low: float = 0.05
  p_high: float = 0.95
  hint_steps: int = 300
  step: int = 0
  hint_prob: float | None = None
  sft_coef: float = 0.001
  kl_coef: float = 0.001
  entropy_coef: float = 0.001
  success_threshold: float = 0.0
  rl_aggregation: str = "group_sum"
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_rollouts", 1)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_int(self, "max_segments", 1)
    require_non_negative(self, "p_low")
    require_non_negative(self, "p_high")
    if not self.p_low <= self.p_high <= 1.0:
      raise ConfigError(f"TreeUFTConfig.p_high is {self.p_high!r}, expected a number in "
                        f"[p_low, 1] = [{self.p_low!r}, 1]")
    require_int(self, "hint_steps", 1)
    require_int(self, "step", 0)
    if self.hint_prob is not None:
      require_non_negative(self, "hint_prob")
      if self.hint_prob > 1.0:
        raise ConfigError(f"TreeUFTConfig.hint_prob is {self.hint_prob!r}, expected a number "
                          "in [0, 1] or None")
    require_finite(self, "sft_coef")
    require_finite(self, "kl_coef")
    require_finite(self, "entropy_coef")
    require_finite(self, "success_threshold")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)
    require_int(self, "reward_levels", 1, optional=True)


def uft_hint_probability(cfg: TreeUFTConfig) -> float:
  """p_t of the cosine schedule at ``cfg.step`` (or ``cfg.hint_prob``).

  Examples:
    >>> uft_hint_probability(TreeUFTConfig()), uft_hint_probability(TreeUFTConfig(step=150))
    (0.95, 0.5)
  """
  if cfg.hint_prob is not None:
    return float(cfg.hint_prob)
  if cfg.step > cfg.hint_steps:
    return 0.0
  cos = 0.5 * (1.0 + math.cos(math.pi * cfg.step / cfg.hint_steps))
  return round(cfg.p_low + (cfg.p_high - cfg.p_low) * cos, 15)


def hint_length_pmf(paths: Paths, p: float, max_segments: int) -> jax.Array:
  r"""[X, S, T + 1] P(h = j | y*) for every leaf y* (as the demonstration), j = 0 … T.

  .. math:: P(h = j \mid y^*) = \sum_{l=0}^{num} \mathrm{Bin}(l; num, p)\,
            1[\mathrm{round}(l L / num) = j],\qquad num = \min(\text{max\_segments}, L)

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> hint_length_pmf(paths, 0.5, 2).round(6).tolist()  # L = 2: Bin(2, 1/2) over h
    [[[0.5, 0.5, 0.0], [0.5, 0.0, 0.0], [0.25, 0.5, 0.25], [0.25, 0.5, 0.25]]]
  """
  length = paths.length.astype(jnp.float64)
  num = jnp.minimum(float(max_segments), length)
  safe_num = jnp.maximum(num, 1.0)[..., None]
  l = jnp.arange(max_segments + 1, dtype=jnp.float64)[None, None, :]
  ok = l <= num[..., None]
  log_c = gammaln(safe_num + 1.0) - gammaln(l + 1.0) - gammaln(jnp.where(ok, safe_num - l, 0.0)
                                                                 + 1.0)
  pmf = jnp.where(ok, jnp.exp(log_c) * jnp.power(p, l)
                  * jnp.power(1.0 - p, jnp.where(ok, safe_num - l, 0.0)), 0.0)
  cut = jnp.round(l * length[..., None] / safe_num)
  j = jnp.arange(paths.node.shape[-1] + 1, dtype=jnp.float64)[None, None, None, :]
  return jnp.sum(jnp.where(cut[..., None] == j, pmf[..., None], 0.0), axis=-2)


def hint_length_table(p: float, max_segments: int, depth: int) -> np.ndarray:
  r"""[T, T + 1] P(h = j | |y*| = L) for L = 1 … T (row L − 1), j = 0 … T (:func:`hint_length_pmf`
  by demonstration length, in float64 NumPy: the schedule point is static).

  Examples:
    >>> hint_length_table(0.5, 2, 2).tolist()  # L = 1: h ∈ {0, 1}; L = 2: Bin(2, 1/2)
    [[0.5, 0.5, 0.0], [0.25, 0.5, 0.25]]
  """
  out = np.zeros((depth, depth + 1))
  for length in range(1, depth + 1):
    num = min(max_segments, length)
    for l in range(num + 1):
      out[length - 1, int(np.round(l * length / num))] += math.comb(num, l) * p ** l * (1.0 - p) ** (num - l)
  return out


def continuation_node_terms(tree: TreeInstance, log_pi: Levels, visits: jax.Array,
                            entropy_coef: float, kl_coef: float) -> Levels:
  """c_H Σ_u V(u) ∇H_u + c_KL Σ_u V(u)(ρ_u − π_u) for visit weights V [X, Nn].

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.policy import policy_log_probs
    >>> theta = (jnp.array([[[0.0, jnp.log(3.0)]]]), jnp.zeros((1, 1, 2)))  # π(·|root) = (1/4, 3/4)
    >>> log_pi = policy_log_probs(tree, theta)
    >>> g = continuation_node_terms(tree, log_pi, jnp.array([[1.0, 0.0]]), 0.0, 1.0)
    >>> [a.round(6).tolist() for a in g]  # k3-KL only, at the root: ρ − π = (1/4, −1/4)
    [[[[0.25, -0.25]]], [[[0.0, 0.0]]]]
  """
  kl = node_pullback(tree, log_pi, visits, tuple(lv.reference for lv in tree.levels))
  return add_levels(scale_levels(entropy_coef, entropy_field(tree, log_pi, visits)),
                    scale_levels(kl_coef, kl))


@compiled("cfg", prepare=fill_reward_levels)
def tree_uft_field(tree: TreeInstance, theta: Levels, cfg: TreeUFTConfig) -> Levels:
  r"""Exact expected ascent field of UFT on a tree (module formula), prompt weights included.

  With p = 0 (no hints) and no KL, entropy or SFT terms it is G · E[Â ∇log π] of plain GRPO.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeUFTConfig(n_rollouts=2, use_std=False, hint_prob=0.0, sft_coef=0.0, kl_coef=0.0,
    ...                     entropy_coef=0.0)
    >>> tree_uft_field(tree, initial_logits(tree), cfg)[0].round(12).tolist()  # 2 (1/2) F_π r
    [[[-0.25, 0.25]]]
  """
  log_pi, pi = policy_log_probs_and_probs(tree, theta)
  m_edge, _, _, _, adv = start_advantages(tree, pi, levels_for(tree, cfg.reward_levels),
                                          cfg.n_rollouts, cfg.use_std, cfg.eps,
                                          cfg.success_threshold, 0)
  d_edge, d_node = length_masses(tree)                              # [.., T]: |y*| = 1 … T
  table = hint_length_table(uft_hint_probability(cfg), cfg.max_segments, len(tree.levels))
  longer = np.flip(np.cumsum(np.flip(table, axis=1), axis=1), axis=1)[:, 1:]  # P(h > t | L)
  omega = tuple(d_node[t] @ table[:, t] for t in range(len(tree.levels)))
  sft = tuple(cfg.sft_coef * (d_edge[t] @ longer[:, t]) for t in range(len(tree.levels)))
  cont, visits = started_coefficients(tree, pi, omega, adv, m_edge)
  scale = group_scale(cfg.rl_aggregation, cfg.n_rollouts)
  g = pullback(tree, log_pi, add_levels(sft, scale_levels(scale, cont)))
  node_terms = continuation_node_terms(tree, log_pi, scale * flat_nodes(visits),
                                       cfg.entropy_coef, cfg.kl_coef)
  return weighted(tree, add_levels(g, node_terms))


@compiled("cfg", "n", prepare=fill_reward_levels)
def tree_uft_estimate(tree: TreeInstance, theta: Levels, cfg: TreeUFTConfig, key: jax.Array,
                      n: int) -> Levels:
  r"""Mean of n sampled UFT gradients: per prompt y* ∼ d, l ∼ Bin(num, p_t), G continuations from
  π(·|y*_{<h}); SFT on the hint tokens, a (1/G) Σ_i Â_i Σ_{t ≥ h} ∇log π on the continuations,
  and their entropy and k3-KL terms.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeUFTConfig(n_rollouts=2, use_std=False, hint_prob=0.0, sft_coef=0.0, kl_coef=0.0,
    ...                     entropy_coef=0.0)
    >>> est = tree_uft_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4000)
    >>> bool(jnp.allclose(est[0], tree_uft_field(tree, initial_logits(tree), cfg)[0], atol=0.02))
    True
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  n_x, _, t_max = paths.node.shape
  p = uft_hint_probability(cfg)
  g_size = cfg.n_rollouts
  scale = group_scale(cfg.rl_aggregation, g_size)
  depth = jnp.arange(t_max)

  def one_call(k):
    k_demo, k_hint, k_cont = jax.random.split(k, 3)
    demo = sample_data(k_demo, tree, 1)                                     # [X, 1]
    length = jnp.take_along_axis(paths.length, demo, axis=1)[:, 0]          # [X]
    num = jnp.minimum(cfg.max_segments, length)
    hits = jax.random.uniform(k_hint, (n_x, cfg.max_segments)) < p
    l = jnp.sum(hits & (jnp.arange(cfg.max_segments)[None, :] < num[:, None]), axis=1)
    h = jnp.round(l * length / jnp.maximum(num, 1)).astype(jnp.int32)      # [X]
    nodes = jnp.take_along_axis(paths.node, demo[..., None], axis=1)[:, 0]  # [X, T]
    start = jnp.take_along_axis(nodes, jnp.minimum(h, t_max - 1)[:, None], axis=1)
    cont = sample_below(k_cont, tree, log_pi, paths, start, g_size)[:, 0]  # [X, G]
    has = (h < length)[:, None]
    r = jnp.take_along_axis(rewards, cont, axis=1)
    adv = jax.vmap(lambda v: sample_group_advantage(v, cfg.use_std, cfg.eps))(r)
    after = (depth[None, :] >= h[:, None])[:, None, :]                      # [X, 1, T]
    coef_cont = jnp.where(has[..., None] & after, scale * adv[..., None] / g_size, 0.0)
    coef_hint = jnp.where((depth[None, :] < h[:, None])[:, None, :], cfg.sft_coef, 0.0)
    both = jnp.concatenate([cont, demo], axis=1)
    g = path_pullback(tree, log_pi, paths, both, jnp.concatenate([coef_cont, coef_hint], 1))
    w_cont = jnp.where(has[..., None] & after, scale / g_size, 0.0)
    visits = path_visits(tree, paths, cont, jnp.broadcast_to(w_cont, cont.shape + (t_max,)))
    return weighted(tree, add_levels(g, continuation_node_terms(
        tree, log_pi, visits, cfg.entropy_coef, cfg.kl_coef)))

  return mean_over_calls(one_call, key, n)


TREE_UFT = TreeRecipe(
    "uft", TreeUFTConfig(), tree_uft_field, tree_uft_estimate,
    "hint = first round(lL/num) tokens of y* ∼ d, l ∼ Bin(num, p_t) (cosine); SFT on the hint, "
    "GRPO on G continuations below it, k3-KL and entropy on the continuations",
    "Liu, Farina, Ozdaglar arXiv 2505.16984; liumy2010/UFT rl_dataset.py, dp_actor.py "
    "(fusion-methods.md §7)",
    prepare=fill_reward_levels)
