r"""SFT/RL fusion recipes as exact logit-gradient fields for tabular softmax policies (THEORY.md F).

Every recipe is written in the unified form of UPGE (Lv et al., arXiv 2509.04419):

.. math:: g_x = w_x\, \mathbb{E}_{y\sim q}\Big[\mathbb{1}_{\text{stable}}(y)\,
          \frac{1}{\pi_{\text{ref}}(y)}\,\hat A(y)\,\nabla_{\theta_x}\pi_\theta(y|x)\Big]

(stability mask × 1/reference denominator × advantage × ∇π), an *ascent* direction on the logits
θ [X, Y]. With ∇_{θ_x} π(y) = π(y)(e_y − π) every on-policy group estimator reduces exactly to
F_π b = π⊙b − (π·b) π for a per-response weight b(y) = E[Â 1_stable | y]; off-policy
demonstrations y* ~ d enter as Σ_{y*} d(y*) c(y*) (e_{y*} − π).

For each recipe the module gives

- ``exact``: the exact expected field (expectation over groups taken in closed form: binomial sums
  over the number of successes for binary rewards, closed forms without std normalisation, and an
  enumeration of the multisets of reward levels where std normalisation or clipping makes the
  advantage non-linear in the group);
- ``estimate``: the sampled estimator as a trainer computes it, given the drawn responses
  (``Draws``: on-policy group indices from π_old and a demonstration index from d);
- ``sample``: ``estimate`` on draws from ``jax.random``. Its mean equals ``exact`` (tests check
  this by Monte Carlo and by brute-force enumeration of every draw).

Defaults are the published ones collected in ``../shared/research/fusion-methods.md``; each recipe
has a frozen config dataclass whose fields override them. "Success" for gates (HPT, ReLIFT, SRFT)
means r(x, y) > ``success_threshold`` (default 0: the +1 of ±1 rewards and the 1 of 0/1 rewards).
Aggregation over a group is the mean over its samples (token sums divided by a constant length
become a constant factor for atomic responses: fusion-methods.md, Rule 4).

References:
  Lv et al., arXiv 2509.04419 (UPGE, HPT); Shao et al., arXiv 2402.03300 (GRPO);
  Liu et al., arXiv 2503.20783 (Dr.GRPO); Schulman et al., arXiv 1707.06347 (PPO);
  Yan et al., arXiv 2504.14945 (LUFFY); Fu et al., arXiv 2506.19767 (SRFT);
  Ma et al., arXiv 2506.07527 (ReLIFT); Tang & Munos, arXiv 2506.09477 (KL gradient pitfalls).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from theory import objectives as obj
from theory.instance import Instance

__all__ = [
    "Draws", "Recipe", "RecipeTrajectory", "RECIPES", "MAX_GROUP_ENUMERATION",
    "InfeasibleExactField",
    "SFTConfig", "ReinforceConfig", "GroupPGConfig", "PPOClipConfig", "KLConfig", "HPTConfig",
    "LUFFYConfig", "SRFTConfig", "ReLIFTConfig",
    "recipe_field", "recipe_sample", "recipe_estimate", "train_recipe", "train_recipe_sampled",
    "initial_logits",
    "draw", "reward_levels", "compositions", "entropy_grad", "fisher_apply",
    "binomial_group_coefficient", "binomial_off_advantage", "binomial_gate_probability",
    "kl_k3_loss_grad", "kl_reverse_grad",
]

MAX_GROUP_ENUMERATION = 50_000  # multisets of reward levels enumerated per (prompt, response)


class InfeasibleExactField(ValueError):
  """The exact group expectation would need more than MAX_GROUP_ENUMERATION multisets."""
NEG_INF = -jnp.inf


# ------------------------------------------------------------------------------------------------
# Small pieces.

def fisher_apply(pi: jax.Array, b: jax.Array) -> jax.Array:
  r"""F_π b = Σ_y π(y) b(y) (e_y − π) = E_{y∼π}[b(y) ∇ log π(y)] per row ([X, Y] or [Y])."""
  b = jnp.where(pi > 0, b, 0.0)
  return pi * b - pi * jnp.sum(pi * b, axis=-1, keepdims=True)


def _demo_apply(pi: jax.Array, u: jax.Array) -> jax.Array:
  """Σ_y u(y) (e_y − π) = u − (Σ u) π per row."""
  return u - jnp.sum(u, axis=-1, keepdims=True) * pi


def entropy_grad(pi: jax.Array, log_pi: jax.Array) -> jax.Array:
  r"""∇_θ H(π_x) = −π ⊙ (log π + H) per row (ascent direction of the entropy bonus)."""
  lp = jnp.where(pi > 0, log_pi, 0.0)
  h = -jnp.sum(pi * lp, axis=-1, keepdims=True)
  return -pi * (lp + h)


def kl_k3_loss_grad(pi: jax.Array, pi_old: jax.Array, ref: jax.Array) -> jax.Array:
  r"""Expected gradient of the k3 KL *loss* as trainers implement it (samples y ∼ π_old held fixed).

  k3(y) = ρ/π − log(ρ/π) − 1 differentiated at a fixed sample gives (1 − ρ(y)/π(y)) (e_y − π);
  its expectation over y ∼ π_old is Σ_y π_old(y)(1 − ρ(y)/π(y))(e_y − π), which equals
  π − ρ = ∇_θ KL(ρ‖π) (the *forward* KL) when π_old = π.

  References: Tang & Munos, arXiv 2506.09477; fusion-methods.md §3.
  """
  ratio = jnp.where(pi > 0, ref / jnp.where(pi > 0, pi, 1.0), 0.0)
  u = jnp.where(pi > 0, pi_old * (1.0 - ratio), 0.0)
  return _demo_apply(pi, u)


def kl_reverse_grad(pi: jax.Array, log_pi: jax.Array, ref: jax.Array) -> jax.Array:
  r"""∇_θ KL(π‖ρ) = F_π (log π − log ρ) (the intended reverse KL)."""
  return fisher_apply(pi, jnp.where(pi > 0, log_pi - obj.safe_log(ref), 0.0))


def initial_logits(inst: Instance) -> jax.Array:
  """θ0 = log ρ on the RL support (0 elsewhere; masked out by the policy)."""
  support = obj.rl_support(inst)
  return jnp.where(support, jnp.log(jnp.where(support, inst.reference, 1.0)), 0.0)


def _policy(inst: Instance, theta: jax.Array):
  log_pi = obj.policy_log_probs(inst, theta)
  return log_pi, jnp.exp(log_pi)


def _finish(inst: Instance, g: jax.Array) -> jax.Array:
  return jnp.where(obj.rl_support(inst), inst.prompt_weights[:, None] * g, 0.0)


def _success(inst: Instance, threshold: float) -> jax.Array:
  return (inst.reward > threshold) & obj.rl_support(inst)


def _binom_pmf(n: int, p: jax.Array) -> jax.Array:
  """[..., n+1] Bin(k; n, p) for k = 0..n (0^0 = 1)."""
  p = jnp.asarray(p)
  lead = (1,) * p.ndim
  k = np.arange(n + 1, dtype=np.float64).reshape(lead + (n + 1,))
  log_c = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                    for i in range(n + 1)]).reshape(lead + (n + 1,))
  p = p[..., None]
  term_p = jnp.where(k > 0, k * obj.safe_log(p), 0.0)
  term_q = jnp.where(n - k > 0, (n - k) * obj.safe_log(1.0 - p), 0.0)
  return jnp.exp(log_c + term_p + term_q)


# ------------------------------------------------------------------------------------------------
# Exact expectation over groups: multisets of reward levels.

@functools.lru_cache(maxsize=None)
def compositions(total: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
  """All count vectors c ∈ N^parts with Σ c = total, and their log multinomial coefficients.

  Returns:
    (counts [K, parts] float64, log_coef [K]) with K = C(total + parts − 1, parts − 1).
  """
  if parts < 1 or total < 0:
    raise ValueError(f"compositions need parts >= 1 and total >= 0, got {parts}, {total}")
  rows = []
  for bars in itertools.combinations(range(total + parts - 1), parts - 1):
    edges = (-1,) + bars + (total + parts - 1,)
    rows.append([edges[i + 1] - edges[i] - 1 for i in range(parts)])
  counts = np.array(rows, dtype=np.float64).reshape(-1, parts)
  log_coef = math.lgamma(total + 1) - np.sum(
      np.vectorize(math.lgamma)(counts + 1.0), axis=1)
  return counts, np.asarray(log_coef, np.float64).reshape(-1)


def reward_levels(inst: Instance) -> int:
  """The largest number of distinct rewards on the RL support of one prompt (concrete input)."""
  r = np.asarray(inst.reward)
  s = np.asarray(obj.rl_support(inst))
  r = r.reshape(-1, r.shape[-1])
  s = s.reshape(-1, s.shape[-1])
  return max(1, max(len(np.unique(row[m])) for row, m in zip(r, s)))


def _resolve_levels(inst: Instance, levels: int | None) -> int:
  if levels is not None:
    return int(levels)
  try:
    return reward_levels(inst)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return int(inst.reward.shape[-1])


def _level_table(total: int, parts: int):
  size = math.comb(total + parts - 1, parts - 1)
  if size > MAX_GROUP_ENUMERATION:
    raise InfeasibleExactField(
        f"exact group expectation needs {size} multisets ({total} samples over "
        f"{parts} reward levels), more than {MAX_GROUP_ENUMERATION}: use fewer distinct rewards, "
        "a smaller group, or no std normalisation (use_std=False)")
  counts, log_coef = compositions(total, parts)
  return jnp.asarray(counts), jnp.asarray(log_coef)


def _row_levels(r_row, support_row, p_row, m: int):
  """The first m distinct rewards of a row and the π-mass on each (0 for unused slots)."""
  same = (r_row[:, None] == r_row[None, :]) & support_row[:, None] & support_row[None, :]
  n = r_row.shape[0]
  earlier = jnp.asarray(np.tri(n, n, -1, dtype=bool))
  is_rep = support_row & ~jnp.any(same & earlier, axis=1)
  p_lvl = jnp.sum(jnp.where(same, p_row[None, :], 0.0), axis=1)
  order = jnp.argsort(~is_rep, stable=True)[:m]
  return r_row[order], jnp.where(is_rep[order], p_lvl[order], 0.0)


def _group_moments(own_r, own_succ, v, p, succ_lvl, extra, table, use_std, eps, gate):
  """E[Â⁺·gate], E[Â⁻·gate] for one sample of reward own_r in a group with the others drawn.

  The others are ``total`` i.i.d. on-policy draws over reward levels v with probabilities p
  (``table`` enumerates their multisets), plus fixed extra rewards (off-policy samples).
  Â = (own − mean)/(std + eps) (std unbiased, ddof = 1) or own − mean. The gate is
  gate[0] ≤ K ≤ gate[1] with K the on-policy successes (own_succ counts the sample itself).
  """
  counts, log_coef = table
  n = 1.0 + jnp.sum(counts[0]) + extra.shape[0]
  log_p = jnp.where(p > 0, obj.safe_log(p), 0.0)[None, :]
  dead = (counts > 0) & (p <= 0)[None, :]
  logw = log_coef + jnp.sum(jnp.where(dead, NEG_INF, counts * log_p), axis=1)
  weights = jnp.exp(logw)
  dv = v - own_r
  de = extra - own_r
  dev = counts @ dv + jnp.sum(de)
  sq = counts @ (dv * dv) + jnp.sum(de * de)
  mean_minus_own = dev / n
  adv = -mean_minus_own
  if use_std:
    var = jnp.maximum((sq - n * mean_minus_own ** 2) / (n - 1.0), 0.0)
    adv = adv / (jnp.sqrt(var) + eps)
  k = counts @ succ_lvl + own_succ
  gated = (k >= gate[0]) & (k <= gate[1])
  pos = jnp.sum(jnp.where(gated, weights * jnp.maximum(adv, 0.0), 0.0))
  neg = jnp.sum(jnp.where(gated, weights * jnp.maximum(-adv, 0.0), 0.0))
  return pos, neg


def _enumerated_advantage(inst, pi_old, n_others, m, use_std, eps, threshold,
                          gate=(0, 1 << 30), demo_in_group=False):
  """[X, Y] E[Â⁺ gate | y], E[Â⁻ gate | y] for an on-policy sample y (enumeration)."""
  table = _level_table(n_others, m)
  support = obj.rl_support(inst)
  gate = jnp.asarray(gate, pi_old.dtype)

  def row(r_row, s_row, p_row, d_row):
    v, p = _row_levels(r_row, s_row, p_row, m)
    succ_lvl = (v > threshold).astype(v.dtype)

    def own(r_y):
      succ = (r_y > threshold).astype(r_y.dtype)
      if not demo_in_group:
        return _group_moments(r_y, succ, v, p, succ_lvl, jnp.zeros((0,), r_y.dtype), table,
                              use_std, eps, gate)
      pos, neg = jax.vmap(lambda r_demo: _group_moments(
          r_y, succ, v, p, succ_lvl, r_demo[None], table, use_std, eps, gate))(r_row)
      dd = jnp.where(d_row > 0, d_row, 0.0)
      return jnp.sum(dd * pos), jnp.sum(dd * neg)
    return jax.vmap(own)(r_row)

  pos, neg = jax.vmap(row)(inst.reward, support, pi_old, inst.data)
  return jnp.where(support, pos, 0.0), jnp.where(support, neg, 0.0)


def _enumerated_off_advantage(inst, pi_old, n_on, m, use_std, eps):
  """[X, Y] E[Â_off | y*] of a demonstration y* in a group with n_on on-policy draws."""
  table = _level_table(n_on, m)
  support = obj.rl_support(inst)
  gate = jnp.asarray((0, 1 << 30), pi_old.dtype)

  def row(r_row, s_row, p_row):
    v, p = _row_levels(r_row, s_row, p_row, m)
    zero = jnp.zeros_like(v)

    def own(r_y):
      pos, neg = _group_moments(r_y, 0.0, v, p, zero, jnp.zeros((0,), r_y.dtype), table,
                                use_std, eps, gate)
      return pos - neg
    return jax.vmap(own)(r_row)

  return jax.vmap(row)(inst.reward, support, pi_old)


def _value(pi, r):
  return jnp.sum(jnp.where(pi > 0, pi * r, 0.0), axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# Binomial closed forms for binary rewards (fusion-methods.md, Rule 2 and Rule 5).

def _binary_advantage(k_hi, n_on, own_hi, off_rewards, r_hi, r_lo, use_std, eps):
  rewards_on = k_hi * r_hi + (n_on - k_hi) * r_lo
  off = jnp.asarray(off_rewards, jnp.result_type(float))
  n = n_on + off.shape[0]
  own = jnp.where(own_hi, r_hi, r_lo)
  mean = (rewards_on + jnp.sum(off)) / n
  adv = own - mean
  if use_std:
    off_b = off.reshape((1,) * jnp.ndim(mean) + (-1,))
    off_sq = jnp.sum((off_b - jnp.expand_dims(mean, -1)) ** 2, axis=-1)
    sq = k_hi * (r_hi - mean) ** 2 + (n_on - k_hi) * (r_lo - mean) ** 2 + off_sq
    adv = adv / (jnp.sqrt(jnp.maximum(sq / (n - 1), 0.0)) + eps)
  return adv


def binomial_group_coefficient(p, group_size: int, use_std: bool = False, eps: float = 1e-6,
                               off_rewards=(), r_hi: float = 1.0, r_lo: float = 0.0):
  r"""c(p) of the group estimator for binary rewards: E[(1/G) Σ A_i ∇log π(y_i)] = c(p) F_π 1⁺.

  .. math:: c(p) = \sum_{j=0}^{G-1} \mathrm{Bin}(j; G-1, p)\,[a^+(j+1) - a^-(j)]

  a⁺(k), a⁻(k): advantage of a success / failure when k of the G on-policy samples succeed, with
  the fixed off-policy rewards in the group statistics. Without std and off-policy samples
  c = (r_hi − r_lo)(1 − 1/G) (Dr.GRPO).

  Args:
    p: [...] success probability under the sampling policy.
    group_size: G on-policy samples.
    use_std: divide by the unbiased group std plus eps.
    eps: std offset (verl: 1e-6).
    off_rewards: rewards of the off-policy samples in the group.
    r_hi, r_lo: the two reward values.

  Returns:
    [...] c(p).

  References: fusion-methods.md Rule 2 (derived, checked by enumeration).
  """
  j = jnp.arange(group_size, dtype=jnp.result_type(float))
  a_pos = _binary_advantage(j + 1, group_size, True, off_rewards, r_hi, r_lo, use_std, eps)
  a_neg = _binary_advantage(j, group_size, False, off_rewards, r_hi, r_lo, use_std, eps)
  pmf = _binom_pmf(group_size - 1, p)
  return jnp.sum(pmf * jnp.reshape(a_pos - a_neg, (1,) * (pmf.ndim - 1) + (-1,)), axis=-1)


def binomial_off_advantage(p, group_size: int, off_reward: float = 1.0, use_std: bool = False,
                           eps: float = 1e-6, r_hi: float = 1.0, r_lo: float = 0.0):
  r"""E[A_off] = Σ_k Bin(k; G, p) a_off(k) for one off-policy sample among G on-policy ones.

  Without std and r_off = r_hi = 1, r_lo = 0 this is G (1 − p)/(G + 1).
  """
  k = jnp.arange(group_size + 1, dtype=jnp.result_type(float))
  n = group_size + 1
  mean = (k * r_hi + (group_size - k) * r_lo + off_reward) / n
  adv = off_reward - mean
  if use_std:
    sq = k * (r_hi - mean) ** 2 + (group_size - k) * (r_lo - mean) ** 2 + (off_reward - mean) ** 2
    adv = adv / (jnp.sqrt(sq / (n - 1)) + eps)
  pmf = _binom_pmf(group_size, p)
  return jnp.sum(pmf * jnp.reshape(adv, (1,) * (pmf.ndim - 1) + (-1,)), axis=-1)


def binomial_gate_probability(p, n: int, low: int, high: int):
  """Pr(low ≤ K ≤ high) for K ~ Bin(n, p) (HPT's SFT weight: low = 0, high = γ; ReLIFT: 0, 0)."""
  pmf = _binom_pmf(n, p)
  k = np.arange(n + 1).reshape((1,) * (pmf.ndim - 1) + (n + 1,))
  sel = (k >= low) & (k <= high)
  return jnp.sum(jnp.where(sel, pmf, 0.0), axis=-1)


# ------------------------------------------------------------------------------------------------
# Draws and the sampled estimators.

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Draws:
  """Sampled responses of one estimator call.

  Attributes:
    on: [X, n] int, on-policy group drawn from π_old (n = 0 for SFT).
    demo: [X] int, demonstration y* drawn from d.
  """

  on: jax.Array
  demo: jax.Array


def draw(key: jax.Array, inst: Instance, theta_old: jax.Array, n_on: int) -> Draws:
  """On-policy group [X, n_on] from π_old and one demonstration [X] from d."""
  k_on, k_demo = jax.random.split(key)
  pi_old = jnp.exp(obj.policy_log_probs(inst, theta_old))
  on = _inverse_cdf(k_on, pi_old, n_on)
  demo = _inverse_cdf(k_demo, jnp.where(inst.data > 0, inst.data, 0.0), 1)[:, 0]
  return Draws(on=on, demo=demo)


def _inverse_cdf(key: jax.Array, probs: jax.Array, n: int) -> jax.Array:
  """[X, n] indices drawn from the rows of probs [X, Y] (never a zero-probability entry)."""
  n_x, n_y = probs.shape
  u = jax.random.uniform(key, (n_x, n), dtype=probs.dtype)
  cdf = jnp.cumsum(probs, axis=-1)
  cdf = cdf / cdf[:, -1:]
  idx = jnp.sum(u[:, :, None] >= cdf[:, None, :], axis=-1)
  last = n_y - 1 - jnp.argmax((probs > 0)[:, ::-1], axis=-1)
  return jnp.minimum(idx, last[:, None]).astype(jnp.int32)


def _onehot(idx, n_y, dtype):
  return jax.nn.one_hot(idx, n_y, dtype=dtype)


def _sample_group_advantage(rewards, use_std, eps):
  """[n] advantages of a sampled group (relative deviations, as in the exact enumeration)."""
  n = rewards.shape[-1]
  diff = rewards[None, :] - rewards[:, None]       # [i, j] = r_j − r_i
  mean_minus_own = jnp.sum(diff, axis=1) / n
  adv = -mean_minus_own
  if use_std:
    sq = jnp.sum(diff * diff, axis=1)
    var = jnp.maximum((sq - n * mean_minus_own ** 2) / (n - 1.0), 0.0)
    adv = adv / (jnp.sqrt(var) + eps)
  return adv


def _score(pi_row, idx):
  """[k, Y] e_{y_i} − π for the indices idx [k]."""
  return _onehot(idx, pi_row.shape[-1], pi_row.dtype) - pi_row[None, :]


# ------------------------------------------------------------------------------------------------
# Configs (published defaults; fusion-methods.md).

@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """SFT on demonstrations y* ~ d: g = coef (d − π). UPGE: π_ref = π_θ, Â ≡ 1."""
  coef: float = 1.0


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
  """REINFORCE (Ahmadian et al.): g = F_π r; the value baseline only lowers the variance."""
  baseline: bool = True


@dataclasses.dataclass(frozen=True)
class GroupPGConfig:
  """GRPO / Dr.GRPO: group-normalised advantage, clipped ratio, KL term.

  Defaults (GRPO): group of 8 (rollout.n of the fusion repos' GRPO runs; DeepSeekMath used 64),
  std normalisation (unbiased, eps 1e-6, as verl), clip ε = 0.2, one inner step, k3 KL loss with
  coefficient 0.04 (DeepSeekMath, [UNCONFIRMED] in the notes). The clip is applied only when
  inner_steps > 1: with one step per batch θ = θ_old, the ratio is 1 and the clip is inert
  (fusion-methods.md Rule 3), in the exact field and in the estimator alike.
  """
  group_size: int = 8
  use_std: bool = True
  eps: float = 1e-6
  clip_low: float = 0.2
  clip_high: float = 0.2
  inner_steps: int = 1
  kl_coef: float = 0.04
  kl_form: str = "k3_loss"    # "k3_loss" (as implemented: forward KL), "reverse", "none"
  entropy_coef: float = 0.0
  reward_levels: int | None = None  # distinct rewards per prompt (None: read from the instance)


@dataclasses.dataclass(frozen=True)
class PPOClipConfig:
  """PPO-clip, bandit form: Â = r − V_old(x) with the exact value, K inner steps on one batch."""
  clip_low: float = 0.2
  clip_high: float = 0.2
  inner_steps: int = 4
  samples: int = 1           # responses per prompt in one estimator call
  entropy_coef: float = 0.0


@dataclasses.dataclass(frozen=True)
class KLConfig:
  """The KL term alone: "k3_loss" (as trainers implement it: ascent −(π − ρ)) or "reverse"."""
  coef: float = 1.0
  form: str = "k3_loss"
  samples: int = 1


@dataclasses.dataclass(frozen=True)
class HPTConfig:
  """HPT (switch): SFT iff K ≤ γ correct of n rollouts, else Dr.GRPO-style RL on the n rollouts.

  Defaults (Unify-Post-Training exp_scripts/train.sh, Qwen2.5-Math-7B): n = 8, γ = 0,
  sft_loss_coef 1.0, grpo_use_std False, no clip, entropy 0.001. The RL term is the mean over the
  group (the code's sum/L_max scale is a batch-dependent constant: fusion-methods.md §2).
  """
  n_rollouts: int = 8
  switch_gate: int = 0
  sft_coef: float = 1.0
  rl_coef: float = 1.0
  use_std: bool = False
  eps: float = 1e-6
  entropy_coef: float = 0.001
  success_threshold: float = 0.0
  reward_levels: int | None = None


@dataclasses.dataclass(frozen=True)
class LUFFYConfig:
  """LUFFY: mixed group (7 on-policy + 1 demonstration), shaping f(π) = π/(π + γ) on the demo.

  Defaults (ElliottYan/LUFFY exp_scripts/train.sh): n_on 7, one full demonstration, γ = 0.1,
  grpo_use_std False, clip removed, entropy 0.001. shaping_gamma None means no reshape
  (behaviour probability 1: weight π(y*)).
  """
  n_on: int = 7
  shaping_gamma: float | None = 0.1
  use_std: bool = False
  eps: float = 1e-6
  entropy_coef: float = 0.001
  reward_levels: int | None = None


@dataclasses.dataclass(frozen=True)
class SRFTConfig:
  """SRFT: entropy-weighted SFT (0.5 e^{−H}), demo RL (π_ref ≡ 1), self RL (0.1 e^{+H} on y⁺).

  Defaults: weights 0.5 and 0.1 (HPT re-implementation, branch ``srft``; the sign of H in the
  positive weight is [UNCONFIRMED] against the paper), mixed group of 7 + 1 for the demo
  advantage, no std (HPT's SRFT baseline; the paper normalises by std: use_std=True), no shaping.
  """
  n_on: int = 7
  sft_coef: float = 0.5
  rl_pos_coef: float = 0.1
  use_std: bool = False
  eps: float = 1e-6
  shaping_gamma: float | None = None
  entropy_coef: float = 0.0
  success_threshold: float = 0.0
  reward_levels: int | None = None


@dataclasses.dataclass(frozen=True)
class ReLIFTConfig:
  """ReLIFT: Dr.GRPO-style RL; prompts whose n rollouts all fail go to a buffer; SFT when full.

  Defaults (TheRoadQaQ/ReLIFT examples/*/train.sh): n = 8, no std, no clip, entropy 0.001,
  batch 128 prompts, buffer (sft_data_size) 128, SFT lr = RL lr (ratio 1), SFT entropy 0.001.
  The exact field is the RL step plus the amortised SFT drift (B/S) w_x (1−p)^n (d − π);
  ``train_recipe`` runs the buffer itself (deterministic mass surrogate, periodic SFT steps).
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
  reward_levels: int | None = None


# ------------------------------------------------------------------------------------------------
# Exact fields and estimators, recipe by recipe. Signature:
#   exact(inst, theta, theta_old, cfg) -> [X, Y];  estimate(inst, theta, theta_old, cfg, draws).

def _sft_exact(inst, theta, theta_old, cfg: SFTConfig):
  del theta_old
  _, pi = _policy(inst, theta)
  return _finish(inst, cfg.coef * (inst.data - pi))


def _sft_estimate(inst, theta, theta_old, cfg: SFTConfig, draws: Draws):
  del theta_old
  _, pi = _policy(inst, theta)
  g = jax.vmap(lambda p, i: _score(p, i[None])[0])(pi, draws.demo)
  return _finish(inst, cfg.coef * g)


def _reinforce_exact(inst, theta, theta_old, cfg: ReinforceConfig):
  del theta_old, cfg
  _, pi = _policy(inst, theta)
  return _finish(inst, fisher_apply(pi, inst.reward))


def _reinforce_estimate(inst, theta, theta_old, cfg: ReinforceConfig, draws: Draws):
  _, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  base = _value(pi, inst.reward)[:, 0] if cfg.baseline else jnp.zeros(pi.shape[0], pi.dtype)

  def row(p, p_old, r, b, idx):
    ratio = p[idx] / p_old[idx]  # 1 on-policy (θ_old = θ)
    return jnp.mean((ratio * (r[idx] - b))[:, None] * _score(p, idx), axis=0)
  return _finish(inst, jax.vmap(row)(pi, pi_old, inst.reward, base, draws.on))


def _clip_weight(a_pos, a_neg, ratio, clip_low, clip_high):
  """E[Â 1_stable | y], 1_stable = 0 iff (Â > 0, ratio > 1 + ε_hi) or (Â < 0, ratio < 1 − ε_lo)."""
  return (jnp.where(ratio > 1.0 + clip_high, 0.0, a_pos)
          - jnp.where(ratio < 1.0 - clip_low, 0.0, a_neg))


def _kl_exact(pi, log_pi, pi_old, ref, form):
  if form == "k3_loss":
    return kl_k3_loss_grad(pi, pi_old, ref)
  if form == "reverse":
    return kl_reverse_grad(pi, log_pi, ref)
  if form == "none":
    return jnp.zeros_like(pi)
  raise ValueError(f"kl form is {form!r}, expected 'k3_loss', 'reverse' or 'none'")


def _kl_estimate_row(p, lp, p_old, ref, idx, form):
  """Per-row mean over samples idx ~ π_old of the KL gradient estimator."""
  score = _score(p, idx)
  if form == "k3_loss":
    coef = 1.0 - ref[idx] / p[idx]
  elif form == "reverse":
    coef = (p[idx] / p_old[idx]) * (lp[idx] - obj.safe_log(ref)[idx])
  elif form == "none":
    coef = jnp.zeros(idx.shape, p.dtype)
  else:
    raise ValueError(f"kl form is {form!r}, expected 'k3_loss', 'reverse' or 'none'")
  return jnp.mean(coef[:, None] * score, axis=0)


def _group_pg_exact(inst, theta, theta_old, cfg: GroupPGConfig):
  log_pi, pi = _policy(inst, theta)
  log_old, pi_old = _policy(inst, theta_old)
  clip_active = cfg.inner_steps > 1
  if cfg.use_std or clip_active:
    m = _resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = _enumerated_advantage(inst, pi_old, cfg.group_size - 1, m, cfg.use_std,
                                         cfg.eps, 0.0)
    ratio = jnp.exp(jnp.where(pi > 0, log_pi - log_old, 0.0))
    if clip_active:
      b = _clip_weight(a_pos, a_neg, ratio, cfg.clip_low, cfg.clip_high)
    else:
      b = a_pos - a_neg
  else:
    g_inv = 1.0 / cfg.group_size
    b = (1.0 - g_inv) * (inst.reward - _value(pi_old, inst.reward))
  g = fisher_apply(pi, b)
  g = g - cfg.kl_coef * _kl_exact(pi, log_pi, pi_old, inst.reference, cfg.kl_form)
  g = g + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return _finish(inst, g)


def _group_pg_estimate(inst, theta, theta_old, cfg: GroupPGConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)

  clip_active = cfg.inner_steps > 1

  def row(p, lp, p_old, r, ref, idx):
    adv = _sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    stable = ~(((adv > 0) & (ratio > 1.0 + cfg.clip_high))
               | ((adv < 0) & (ratio < 1.0 - cfg.clip_low))) | (not clip_active)
    g = jnp.mean((jnp.where(stable, adv, 0.0) * ratio)[:, None] * _score(p, idx), axis=0)
    return g - cfg.kl_coef * _kl_estimate_row(p, lp, p_old, ref, idx, cfg.kl_form)

  g = jax.vmap(row)(pi, log_pi, pi_old, inst.reward, inst.reference, draws.on)
  return _finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _ppo_exact(inst, theta, theta_old, cfg: PPOClipConfig):
  log_pi, pi = _policy(inst, theta)
  log_old, pi_old = _policy(inst, theta_old)
  adv = inst.reward - _value(pi_old, inst.reward)
  ratio = jnp.exp(jnp.where(pi > 0, log_pi - log_old, 0.0))
  b = _clip_weight(jnp.maximum(adv, 0.0), jnp.maximum(-adv, 0.0), ratio, cfg.clip_low,
                   cfg.clip_high)
  g = fisher_apply(pi, b) + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return _finish(inst, g)


def _ppo_estimate(inst, theta, theta_old, cfg: PPOClipConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  value = _value(pi_old, inst.reward)[:, 0]

  def row(p, p_old, r, v, idx):
    adv = r[idx] - v
    ratio = p[idx] / p_old[idx]
    stable = ~(((adv > 0) & (ratio > 1.0 + cfg.clip_high))
               | ((adv < 0) & (ratio < 1.0 - cfg.clip_low)))
    return jnp.mean((jnp.where(stable, adv, 0.0) * ratio)[:, None] * _score(p, idx), axis=0)

  g = jax.vmap(row)(pi, pi_old, inst.reward, value, draws.on)
  return _finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _kl_only_exact(inst, theta, theta_old, cfg: KLConfig):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  return _finish(inst, -cfg.coef * _kl_exact(pi, log_pi, pi_old, inst.reference, cfg.form))


def _kl_only_estimate(inst, theta, theta_old, cfg: KLConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  g = jax.vmap(lambda p, lp, po, ref, idx: _kl_estimate_row(p, lp, po, ref, idx, cfg.form))(
      pi, log_pi, pi_old, inst.reference, draws.on)
  return _finish(inst, -cfg.coef * g)


def _success_stats(inst, pi_old, threshold):
  """p = π_old(Y⁺), V⁺ = E[r | success], V⁻ = E[r | failure] per prompt ([X] each)."""
  succ = _success(inst, threshold)
  p = jnp.sum(jnp.where(succ, pi_old, 0.0), axis=-1)
  r_pos = jnp.sum(jnp.where(succ, pi_old * inst.reward, 0.0), axis=-1)
  r_neg = jnp.sum(jnp.where(~succ & (pi_old > 0), pi_old * inst.reward, 0.0), axis=-1)
  v_pos = jnp.where(p > 0, r_pos / jnp.where(p > 0, p, 1.0), 0.0)
  v_neg = jnp.where(p < 1, r_neg / jnp.where(p < 1, 1.0 - p, 1.0), 0.0)
  return p, v_pos, v_neg, succ


def _gated_mean_advantage(inst, pi_old, n, gate_low, threshold):
  r"""[X, Y] E[Â 1{K ≥ gate_low} | y] without std, as a binomial sum over the others' successes.

  Â = r(y) − mean of the n group rewards; given j successes among the n − 1 others their reward
  sum has mean j V⁺ + (n − 1 − j) V⁻.
  """
  p, v_pos, v_neg, succ = _success_stats(inst, pi_old, threshold)
  j = jnp.arange(n, dtype=pi_old.dtype)                           # others' successes 0..n-1
  pmf = _binom_pmf(n - 1, p)                                        # [X, n]
  others = j[None, :] * v_pos[:, None] + (n - 1 - j)[None, :] * v_neg[:, None]  # [X, n]
  own = inst.reward[:, :, None]                                     # [X, Y, 1]
  adv = own - (own + others[:, None, :]) / n                       # [X, Y, n]
  k = j[None, None, :] + succ[:, :, None].astype(pi_old.dtype)
  return jnp.sum(jnp.where(k >= gate_low, pmf[:, None, :] * adv, 0.0), axis=-1)


def _hpt_exact(inst, theta, theta_old, cfg: HPTConfig):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  n, gamma = cfg.n_rollouts, cfg.switch_gate
  p = _success_stats(inst, pi_old, cfg.success_threshold)[0]
  sft_weight = binomial_gate_probability(p, n, 0, gamma)[:, None]
  if cfg.use_std:
    m = _resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = _enumerated_advantage(inst, pi_old, n - 1, m, True, cfg.eps,
                                         cfg.success_threshold, gate=(gamma + 1, n))
    b = a_pos - a_neg
  else:
    b = _gated_mean_advantage(inst, pi_old, n, gamma + 1, cfg.success_threshold)
  g = (cfg.sft_coef * sft_weight * (inst.data - pi) + cfg.rl_coef * fisher_apply(pi, b)
       + cfg.entropy_coef * entropy_grad(pi, log_pi))
  return _finish(inst, g)


def _hpt_estimate(inst, theta, theta_old, cfg: HPTConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  succ = _success(inst, cfg.success_threshold)

  def row(p, p_old, r, s, idx, demo):
    k = jnp.sum(s[idx])
    adv = _sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    rl = jnp.mean((adv * ratio)[:, None] * _score(p, idx), axis=0)
    sft = _score(p, demo[None])[0]
    return jnp.where(k <= cfg.switch_gate, cfg.sft_coef * sft, cfg.rl_coef * rl)

  g = jax.vmap(row)(pi, pi_old, inst.reward, succ, draws.on, draws.demo)
  return _finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _shaping_weight(pi, gamma):
  """φ(y) = f′(π(y)) π(y): γ π/(π + γ)² for f = π/(π + γ); π for no reshape (f = π)."""
  if gamma is None:
    return pi
  return gamma * pi / (pi + gamma) ** 2


def _mixed_group_advantages(inst, pi_old, n_on, use_std, eps, levels):
  """(ā_on [X, Y], ā_off [X, Y]): mean advantages of an on-policy y and a demo y* in the mixed
  group of n_on on-policy samples and one demonstration y* ~ d."""
  n = n_on + 1
  if use_std:
    m = _resolve_levels(inst, levels)
    a_pos, a_neg = _enumerated_advantage(inst, pi_old, n_on - 1, m, True, eps, 0.0,
                                         demo_in_group=True)
    a_on = a_pos - a_neg
    a_off = _enumerated_off_advantage(inst, pi_old, n_on, m, True, eps)
  else:
    v = _value(pi_old, inst.reward)
    e_d = _value(inst.data, inst.reward)
    a_on = inst.reward - (inst.reward + (n_on - 1) * v + e_d) / n
    a_off = inst.reward - (inst.reward + n_on * v) / n
  return a_on, a_off


def _luffy_exact(inst, theta, theta_old, cfg: LUFFYConfig):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  n = cfg.n_on + 1
  a_on, a_off = _mixed_group_advantages(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps,
                                        cfg.reward_levels)
  on = (cfg.n_on / n) * fisher_apply(pi, a_on)
  u = jnp.where(inst.data > 0, inst.data * a_off * _shaping_weight(pi, cfg.shaping_gamma), 0.0)
  off = _demo_apply(pi, u) / n
  return _finish(inst, on + off + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _mixed_group_sample(p, p_old, r, idx, demo, use_std, eps):
  """Advantages of the on-policy samples [n_on] and of the demo [] in one sampled mixed group."""
  rewards = jnp.concatenate([r[idx], r[demo][None]])
  adv = _sample_group_advantage(rewards, use_std, eps)
  return adv[:-1], adv[-1]


def _luffy_estimate(inst, theta, theta_old, cfg: LUFFYConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  n = cfg.n_on + 1

  def row(p, p_old, r, idx, demo):
    adv_on, adv_off = _mixed_group_sample(p, p_old, r, idx, demo, cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    on = jnp.sum((adv_on * ratio)[:, None] * _score(p, idx), axis=0)
    off = adv_off * _shaping_weight(p[demo], cfg.shaping_gamma) * _score(p, demo[None])[0]
    return (on + off) / n

  g = jax.vmap(row)(pi, pi_old, inst.reward, draws.on, draws.demo)
  return _finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _entropy(pi, log_pi):
  return -jnp.sum(jnp.where(pi > 0, pi * log_pi, 0.0), axis=-1, keepdims=True)


def _srft_exact(inst, theta, theta_old, cfg: SRFTConfig):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  h = _entropy(pi, log_pi)
  succ = _success(inst, cfg.success_threshold).astype(pi.dtype)
  _, a_off = _mixed_group_advantages(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps,
                                     cfg.reward_levels)
  sft = cfg.sft_coef * jnp.exp(-h) * (inst.data - pi)
  u = jnp.where(inst.data > 0, inst.data * a_off * _shaping_weight(pi, cfg.shaping_gamma), 0.0)
  demo_rl = _demo_apply(pi, u)
  w_pos = cfg.rl_pos_coef * jnp.exp(h)
  self_rl = fisher_apply(pi, w_pos * succ - (1.0 - succ))
  g = sft + demo_rl + self_rl + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return _finish(inst, g)


def _srft_estimate(inst, theta, theta_old, cfg: SRFTConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  h = _entropy(pi, log_pi)[:, 0]
  succ = _success(inst, cfg.success_threshold).astype(pi.dtype)

  def row(p, p_old, r, s, hx, idx, demo):
    _, adv_off = _mixed_group_sample(p, p_old, r, idx, demo, cfg.use_std, cfg.eps)
    score_demo = _score(p, demo[None])[0]
    sft = cfg.sft_coef * jnp.exp(-hx) * score_demo
    demo_rl = adv_off * _shaping_weight(p[demo], cfg.shaping_gamma) * score_demo
    ratio = p[idx] / p_old[idx]
    weight = cfg.rl_pos_coef * jnp.exp(hx) * s[idx] - (1.0 - s[idx])
    self_rl = jnp.mean((weight * ratio)[:, None] * _score(p, idx), axis=0)
    return sft + demo_rl + self_rl

  g = jax.vmap(row)(pi, pi_old, inst.reward, succ, h, draws.on, draws.demo)
  return _finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _relift_rl_exact(inst, theta, theta_old, cfg: ReLIFTConfig):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  n = cfg.n_rollouts
  if cfg.use_std:
    m = _resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = _enumerated_advantage(inst, pi_old, n - 1, m, True, cfg.eps, 0.0)
    b = a_pos - a_neg
  else:
    b = (1.0 - 1.0 / n) * (inst.reward - _value(pi_old, inst.reward))
  g = cfg.rl_coef * fisher_apply(pi, b) + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return _finish(inst, g)


def _relift_sft_direction(inst, pi, log_pi, cfg: ReLIFTConfig):
  """[X, Y] per-item SFT ascent direction (d − π) + sft entropy bonus (no prompt weight)."""
  return (inst.data - pi) + cfg.sft_entropy_coef * entropy_grad(pi, log_pi)


def _relift_inflow(inst, pi_old, cfg: ReLIFTConfig):
  """[X] expected buffer items per step: B w_x (1 − p_x)^n (all n rollouts fail)."""
  p = _success_stats(inst, pi_old, cfg.success_threshold)[0]
  return cfg.batch_prompts * inst.prompt_weights * binomial_gate_probability(
      p, cfg.n_rollouts, 0, 0)


def _relift_exact(inst, theta, theta_old, cfg: ReLIFTConfig):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  rate = cfg.sft_lr_ratio * _relift_inflow(inst, pi_old, cfg) / cfg.buffer_size
  sft = jnp.where(obj.rl_support(inst), rate[:, None] * _relift_sft_direction(inst, pi, log_pi,
                                                                               cfg), 0.0)
  return _relift_rl_exact(inst, theta, theta_old, cfg) + sft


def _relift_estimate(inst, theta, theta_old, cfg: ReLIFTConfig, draws: Draws):
  log_pi, pi = _policy(inst, theta)
  _, pi_old = _policy(inst, theta_old)
  succ = _success(inst, cfg.success_threshold)

  def row(p, lp, p_old, r, s, idx, demo):
    adv = _sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    rl = cfg.rl_coef * jnp.mean((adv * ratio)[:, None] * _score(p, idx), axis=0)
    all_fail = ~jnp.any(s[idx])
    item = _score(p, demo[None])[0] + cfg.sft_entropy_coef * entropy_grad(p, lp)
    scale = cfg.sft_lr_ratio * cfg.batch_prompts / cfg.buffer_size
    return rl, jnp.where(all_fail, scale * item, 0.0)

  rl, sft = jax.vmap(row)(pi, log_pi, pi_old, inst.reward, succ, draws.on, draws.demo)
  g = rl + cfg.entropy_coef * entropy_grad(pi, log_pi) + sft
  return _finish(inst, g)


# ------------------------------------------------------------------------------------------------
# Registry.

@dataclasses.dataclass(frozen=True)
class Recipe:
  """One fusion recipe: its exact field, its sampled estimator and its default config.

  Attributes:
    name: registry key.
    config: the default (published) config; pass another instance to override.
    exact: (inst, theta, theta_old, cfg) -> [X, Y] exact expected ascent field.
    estimate: (inst, theta, theta_old, cfg, draws) -> [X, Y] one sampled estimate.
    group: (cfg) -> number of on-policy draws per prompt the estimator uses.
    summary: one line (unified form).
  """

  name: str
  config: Any
  exact: Callable
  estimate: Callable
  group: Callable
  summary: str


def _group_of(field_name: str, default: int = 1) -> Callable:
  return lambda cfg: int(getattr(cfg, field_name, default))


RECIPES: dict[str, Recipe] = {
    "sft": Recipe("sft", SFTConfig(), _sft_exact, _sft_estimate, lambda cfg: 0,
                  "π_ref = π_θ, Â ≡ 1 on y* ~ d: g = d − π"),
    "reinforce": Recipe("reinforce", ReinforceConfig(), _reinforce_exact, _reinforce_estimate,
                        lambda cfg: 1, "π_ref = π_θ, Â = r (− V): g = F_π r"),
    "grpo": Recipe("grpo", GroupPGConfig(), _group_pg_exact, _group_pg_estimate,
                   _group_of("group_size"),
                   "π_ref = π_old, clip, Â = (r − mean)/std over G, k3 KL loss (forward KL)"),
    "grpo_reverse_kl": Recipe(
        "grpo_reverse_kl", GroupPGConfig(kl_form="reverse"), _group_pg_exact,
        _group_pg_estimate, _group_of("group_size"),
        "GRPO with the intended reverse KL(π‖ρ) gradient"),
    "dr_grpo": Recipe(
        "dr_grpo", GroupPGConfig(use_std=False, kl_coef=0.0, kl_form="none"), _group_pg_exact,
        _group_pg_estimate, _group_of("group_size"),
        "π_ref = π_old, clip, Â = r − mean over G: g = (1 − 1/G) F_π (r − V)"),
    "ppo_clip": Recipe("ppo_clip", PPOClipConfig(), _ppo_exact, _ppo_estimate,
                       _group_of("samples"), "π_ref = π_old, 1_clip, Â = r − V_old, K inner steps"),
    "kl_k3": Recipe("kl_k3", KLConfig(), _kl_only_exact, _kl_only_estimate, _group_of("samples"),
                    "k3 KL as a loss (as implemented): g = −(π − ρ), the forward KL"),
    "kl_reverse": Recipe("kl_reverse", KLConfig(form="reverse"), _kl_only_exact,
                         _kl_only_estimate, _group_of("samples"),
                         "reverse KL (as intended): g = −F_π log(π/ρ)"),
    "hpt": Recipe("hpt", HPTConfig(), _hpt_exact, _hpt_estimate, _group_of("n_rollouts"),
                  "gate K ≤ γ of n: SFT (π_ref = π_θ) else RL (π_ref = π_old, Â = r − mean)"),
    "luffy": Recipe("luffy", LUFFYConfig(), _luffy_exact, _luffy_estimate, _group_of("n_on"),
                    "mixed group; demo: π_ref ≡ 1, shaping f = π/(π + γ)"),
    "srft": Recipe("srft", SRFTConfig(), _srft_exact, _srft_estimate, _group_of("n_on"),
                   "0.5 e^{−H} SFT + demo RL (π_ref ≡ 1) + self RL (0.1 e^{H} on y⁺, −1 on y⁻)"),
    "relift": Recipe("relift", ReLIFTConfig(), _relift_exact, _relift_estimate,
                     _group_of("n_rollouts"),
                     "Dr.GRPO RL + buffer of all-failed prompts with periodic SFT"),
}


def _get(name: str) -> Recipe:
  if name not in RECIPES:
    raise ValueError(f"recipe {name!r} is not known (known: {', '.join(sorted(RECIPES))})")
  return RECIPES[name]


def _config(recipe: Recipe, config):
  cfg = recipe.config if config is None else config
  if type(cfg) is not type(recipe.config):
    raise TypeError(f"recipe {recipe.name!r} takes a {type(recipe.config).__name__}, "
                    f"got {type(cfg).__name__}")
  return cfg


def _with_levels(inst: Instance, cfg):
  if hasattr(cfg, "reward_levels") and cfg.reward_levels is None:
    return dataclasses.replace(cfg, reward_levels=_resolve_levels(inst, None))
  return cfg


def recipe_field(inst: Instance, name: str, theta: jax.Array, theta_old: jax.Array | None = None,
                 config=None) -> jax.Array:
  r"""The exact expected ascent field of recipe ``name`` at logits θ (rollouts from θ_old).

  Args:
    inst: instance.
    name: a key of :data:`RECIPES`.
    theta: [X, Y] logits of the policy being updated.
    theta_old: [X, Y] logits of the rollout policy (default θ: the first inner step).
    config: the recipe's config (default: published defaults).

  Returns:
    [X, Y] ascent direction (0 off the RL support), prompt weights included.
  """
  recipe = _get(name)
  cfg = _with_levels(inst, _config(recipe, config))
  theta_old = theta if theta_old is None else theta_old
  return _field_jit(inst, theta, theta_old, name, cfg)


@functools.partial(jax.jit, static_argnames=("name", "cfg"))
def _field_jit(inst, theta, theta_old, name, cfg):
  return RECIPES[name].exact(inst, theta, theta_old, cfg)


@functools.partial(jax.jit, static_argnames=("name", "cfg"))
def _sample_jit(key, inst, theta, theta_old, name, cfg):
  recipe = RECIPES[name]
  draws = draw(key, inst, theta_old, max(recipe.group(cfg), 1))
  return recipe.estimate(inst, theta, theta_old, cfg, draws)


def recipe_estimate(inst: Instance, name: str, theta: jax.Array, draws: Draws,
                    theta_old: jax.Array | None = None, config=None) -> jax.Array:
  """The sampled estimator of recipe ``name`` on given draws (see :class:`Draws`)."""
  recipe = _get(name)
  cfg = _config(recipe, config)
  theta_old = theta if theta_old is None else theta_old
  return recipe.estimate(inst, theta, theta_old, cfg, draws)


def recipe_sample(key: jax.Array, inst: Instance, name: str, theta: jax.Array,
                  theta_old: jax.Array | None = None, config=None) -> jax.Array:
  """One Monte-Carlo estimate of the field: draws from π_old and d, then the estimator.

  Its expectation over ``key`` equals :func:`recipe_field` (tested).
  """
  recipe = _get(name)
  cfg = _config(recipe, config)
  theta_old = theta if theta_old is None else theta_old
  return _sample_jit(key, inst, theta, theta_old, name, cfg)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RecipeTrajectory:
  """SFT loss and reward along training (index 0: the start, then after each outer step).

  Attributes:
    sft_loss: [steps + 1] L(π_t).
    reward: [steps + 1] J(π_t).
  """

  sft_loss: jax.Array
  reward: jax.Array


@functools.partial(jax.jit, static_argnames=("name", "steps", "cfg"))
def _train(inst, theta0, lr, name: str, steps: int, cfg):
  recipe = RECIPES[name]
  inner = int(getattr(cfg, "inner_steps", 1))
  relift = isinstance(cfg, ReLIFTConfig)
  field = _relift_rl_exact if relift else recipe.exact

  def measure(theta):
    log_pi = obj.policy_log_probs(inst, theta)
    return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)

  def outer(carry, _):
    theta, mass = carry
    theta_old = theta

    def inner_step(th, _):
      return th + lr * field(inst, th, theta_old, cfg), None

    theta, _ = jax.lax.scan(inner_step, theta, None, length=inner)
    if relift:
      _, pi_old = _policy(inst, theta_old)
      mass = mass + _relift_inflow(inst, pi_old, cfg)
      total = jnp.sum(mass)
      fire = total >= cfg.buffer_size
      log_pi, pi = _policy(inst, theta)
      share = jnp.where(fire, mass / jnp.where(fire, total, 1.0), 0.0)
      sft = jnp.where(obj.rl_support(inst),
                      share[:, None] * _relift_sft_direction(inst, pi, log_pi, cfg), 0.0)
      theta = theta + lr * cfg.sft_lr_ratio * sft
      mass = jnp.where(fire, mass * (1.0 - cfg.buffer_size / jnp.where(fire, total, 1.0)), mass)
    return (theta, mass), measure(theta)

  mass0 = jnp.zeros(theta0.shape[0], theta0.dtype)
  (theta, _), (l_traj, j_traj) = jax.lax.scan(outer, (theta0, mass0), None, length=steps)
  l0, j0 = measure(theta0)
  traj = RecipeTrajectory(sft_loss=jnp.concatenate([l0[None], l_traj]),
                          reward=jnp.concatenate([j0[None], j_traj]))
  return obj.policy_log_probs(inst, theta), traj


def train_recipe(inst: Instance, name: str, steps: int, lr: float, config=None,
                 theta0: jax.Array | None = None):
  r"""Runs a recipe's exact field as discrete ascent steps θ ← θ + lr · g(θ; θ_old).

  Each outer step fixes θ_old = θ (the rollout policy) and takes the config's ``inner_steps``
  (PPO/GRPO: K inner steps on one batch; others: 1). ReLIFT runs its buffer: the expected number
  of all-failed prompts B w_x (1 − p_x)^n accumulates, and when it reaches the buffer size an SFT
  step with learning rate lr·sft_lr_ratio is taken on the buffered mass (which is consumed).
  Compiles once per (shape, name, steps, config); lr and θ0 are traced.

  Args:
    inst: instance (unbatched; vmap over a padded batch if needed).
    name: a key of :data:`RECIPES`.
    steps: number of outer steps.
    lr: learning rate.
    config: the recipe's config (default: published defaults).
    theta0: [X, Y] initial logits (default: log ρ).

  Returns:
    (log_pi [X, Y] final policy, :class:`RecipeTrajectory` with [steps + 1] L and J).
  """
  recipe = _get(name)
  cfg = _with_levels(inst, _config(recipe, config))
  theta0 = initial_logits(inst) if theta0 is None else jnp.asarray(theta0, inst.data.dtype)
  lr = jnp.asarray(lr, inst.data.dtype)
  return _train(inst, theta0, lr, name, int(steps), cfg)


@functools.partial(jax.jit, static_argnames=("name", "steps", "samples", "cfg"))
def _train_sampled(inst, theta0, lr, key, name: str, steps: int, samples: int, cfg):
  recipe = RECIPES[name]
  inner = int(getattr(cfg, "inner_steps", 1))
  group = max(recipe.group(cfg), 1)

  def measure(theta):
    log_pi = obj.policy_log_probs(inst, theta)
    return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)

  def outer(carry, step_key):
    theta = carry
    theta_old = theta
    keys = jax.random.split(step_key, samples)
    # One batch of rollouts per outer step, reused by the inner steps (as PPO/GRPO do).
    draws = jax.vmap(lambda k: draw(k, inst, theta_old, group))(keys)

    def inner_step(th, _):
      g = jax.vmap(lambda dr: recipe.estimate(inst, th, theta_old, cfg, dr))(draws)
      return th + lr * jnp.mean(g, axis=0), None

    theta, _ = jax.lax.scan(inner_step, theta, None, length=inner)
    return theta, measure(theta)

  theta, (l_traj, j_traj) = jax.lax.scan(outer, theta0, jax.random.split(key, steps))
  l0, j0 = measure(theta0)
  traj = RecipeTrajectory(sft_loss=jnp.concatenate([l0[None], l_traj]),
                          reward=jnp.concatenate([j0[None], j_traj]))
  return obj.policy_log_probs(inst, theta), traj


def train_recipe_sampled(inst: Instance, name: str, steps: int, lr: float, key: jax.Array,
                         samples: int = 512, config=None, theta0: jax.Array | None = None):
  r"""Runs a recipe with its Monte-Carlo estimator instead of the exact field.

  For rewards with many distinct values the exact group expectation of GRPO-style recipes needs
  too many multisets (see ``MAX_GROUP_ENUMERATION``); this runs the same ascent with the field
  replaced by the mean of the estimator over ``samples`` independent groups per outer step (an
  unbiased estimate of the exact field, tested against it). ReLIFT's buffer is not simulated here.

  Args:
    inst: instance.
    name: a key of :data:`RECIPES` other than ``relift``.
    steps: outer steps; lr: learning rate; key: PRNG key; samples: groups per outer step.
    config: the recipe's config (default: published defaults).
    theta0: [X, Y] initial logits (default: log ρ).

  Returns:
    (log_pi [X, Y] final policy, :class:`RecipeTrajectory`).
  """
  recipe = _get(name)
  cfg = _config(recipe, config)
  if isinstance(cfg, ReLIFTConfig):
    raise ValueError("train_recipe_sampled does not simulate ReLIFT's buffer; use train_recipe")
  theta0 = initial_logits(inst) if theta0 is None else jnp.asarray(theta0, inst.data.dtype)
  return _train_sampled(inst, theta0, jnp.asarray(lr, inst.data.dtype), key, name, int(steps),
                        int(samples), cfg)
