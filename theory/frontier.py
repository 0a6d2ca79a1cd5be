r"""The exact Pareto frontier of SFT loss against reward, and decoupling regret.

This module implements **this project's** result D4 (THEORY.md part D; not the paper's).

L(π) = E_w[Σ_y d log(1/π)] is convex and J(π) = E_w[Σ_y π r] linear in π, so every Pareto-optimal
(L, J) pair over tabular policies is reached by

.. math:: \pi_\lambda = \arg\min_\pi\; L(\pi) - \lambda J(\pi),\qquad \lambda \ge 0.

The problem splits per prompt. With S = supp d_x the KKT conditions give π_λ(y) = d(y)/(ν − λ r(y))
on S, ν > λ max_S r solving Σ_S π_λ = 1. Off S only a response u maximising r off S can carry mass,
and only if r(u) > max_S r: if s = Σ_S d/(λ r(u) − λ r) ≤ 1 then ν = λ r(u) and π_λ(u) = 1 − s;
otherwise the root on S applies. Several maximisers off S share the mass equally.

Numerics (every quantity stays finite and keeps its relative precision over the valid domain,
β ∈ [1e-6, 1e6], |r|/β ≤ 1e6, where the RL path π*_β(d) sits within e^{-2e6} of the best
response and the frontier's λ reaches e^{2e6}; the solver is :mod:`._frontier_solver`):

- λ enters only as ℓ = log λ: per prompt, the root t = ν − λ max_S r by bisection in log t and a
  Newton polish; across prompts, ℓ by bisection on asinh(ℓ) over a bracket built from the target
  (no cap on λ).
- The reward deficit Δ(π) = J_max − J(π) = E_w Σ_y π (max r − r) is a sum of non-negative terms,
  kept as a logsumexp of log π + log gap (:func:`log_reward_deficit`).
- The regret is not L(π) minus the frontier's loss (two numbers of size |r|/β that cancel), but
  its dual form, a sum of non-negative terms: for every λ,

  .. math:: L(\pi) - \min_{\pi'} [L(\pi') + \lambda(\Delta(\pi') - \Delta(\pi))]
            = E_w\Big[\sum_S d\,\varphi(\log\tfrac{\pi}{\pi_\lambda})
            + \sum_{y\notin S} \pi\,\lambda\,\mathrm{gap} + \kappa\,(1 - \textstyle\sum_S\pi)\Big]

  with φ(u) = e^u − 1 − u and κ = ν − λ max r ≥ 0 (a Bregman divergence of L + λΔ). It bounds the
  regret from above for every λ, with an error of second order in the error of λ, and equals it
  at the root.

All functions are unbatched (one instance); batch with ``jax.vmap`` (pad instances with
``theory.instance.pad_instance``: weight-0 prompts and masked responses are respected). Every loop
has a fixed length, so each function compiles once per shape.

References: this project's THEORY.md D4; arXiv 2601.07389 for L and J.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import objectives as obj
from ._frontier_solver import (
  NEWTON_STEPS,
  REGRET_STEPS,
  ROOT_STEPS,
  allowed_responses,
  log_expect,
  prompt_geometries,
  prompt_geometry,
  prompt_regret_bound,
  search_log_lambda,
  solve_at_data,
  solve_prompt,
  solve_prompts,
  support_sft_loss,
)
from ._numerics import NEG_INF, safe_log
from .instance import Instance, rl_stage_after_sft

__all__ = [
    "ROOT_STEPS", "NEWTON_STEPS", "REGRET_STEPS",
    "frontier_row", "frontier_policy", "frontier_point", "frontier_curve",
    "frontier_at_reward", "frontier_at_log_deficit", "decoupling_regret",
    "rl_path_instance", "rl_path_policy", "rl_path", "rl_path_curve", "rl_path_regret",
    "max_reward", "reward_deficit", "log_reward_deficit",
]

def frontier_row(data: jax.Array, reward: jax.Array, allowed: jax.Array,
                 lam: jax.Array) -> jax.Array:
  r"""One prompt of the frontier: log π_λ = argmin_π Σ_S d log(1/π) − λ Σ π r over the simplex.

  .. math:: \pi_\lambda(y) = \frac{d(y)}{\nu - \lambda r(y)}\ (y \in S),\qquad
            \pi_\lambda(u) = 1 - \sum_S \frac{d}{\lambda r(u) - \lambda r}\ \text{(off support)}

  Args:
    data: [Y] d(·|x); S = supp d ∩ allowed (if ``allowed`` cuts supp d, the rest is ignored).
    reward: [Y] r(x, ·).
    allowed: [Y] bool, the responses a policy may use (real responses).
    lam: [] λ ≥ 0 (finite).

  Returns:
    [Y] log π_λ(·|x), -inf where π_λ has no mass.

  Examples:
    >>> import jax.numpy as jnp
    >>> row = frontier_row(jnp.array([0.5, 0.5, 0.0]), jnp.array([0.0, 1.0, 3.0]),
    ...                    jnp.array([True, True, True]), 1.0)
    >>> [round(float(p), 4) for p in jnp.exp(row)]  # 0.5/3, 0.5/2 and the rest on r = 3
    [0.1667, 0.25, 0.5833]

  References: this project's THEORY.md D4.
  """
  lam = jnp.asarray(lam, data.dtype)
  return solve_prompt(prompt_geometry(data, reward, allowed), jnp.log(lam)).log_pi


@jax.jit
def frontier_policy(inst: Instance, lam, allowed: jax.Array | None = None) -> jax.Array:
  r"""The frontier policy π_λ = argmin L(π) − λ J(π) over tabular policies (this project's D4).

  .. math:: \pi_\lambda(y|x) = d(y|x) / (\nu_x - \lambda r(x, y))\ \text{on supp}\, d_x

  Args:
    inst: instance (data d, reward r, response_mask).
    lam: [] λ ≥ 0; λ = 0 gives π = d, large λ concentrates on the best responses.
    allowed: optional [X, Y] bool restricting the responses a policy may use (default: all real
      responses, ``inst.response_mask``).

  Returns:
    [X, Y] log π_λ (-inf where no mass).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> import jax.numpy as jnp
    >>> [round(float(v), 4) for v in jnp.exp(frontier_policy(inst, 0.0))[0]]
    [0.5, 0.5]

  References: this project's THEORY.md D4.
  """
  ell = jnp.log(jnp.asarray(lam, inst.data.dtype))
  return solve_prompts(prompt_geometries(inst, allowed), ell).log_pi


def frontier_point(inst: Instance, lam, allowed: jax.Array | None = None):
  r"""(L(π_λ), J(π_λ)) for one λ (this project's D4).

  .. math:: L(\pi_\lambda) = E_w\Big[\sum_y d \log\frac{1}{\pi_\lambda}\Big],\quad
            J(\pi_\lambda) = E_w\Big[\sum_y \pi_\lambda r\Big]

  Args:
    inst: instance.
    lam: [] λ ≥ 0.
    allowed: optional [X, Y] bool restriction (default: real responses).

  Returns:
    (sft_loss [], reward []).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> [round(float(v), 6) for v in frontier_point(inst, 0.0)]  # (log 2, 1/2)
    [0.693147, 0.5]
  """
  log_pi = frontier_policy(inst, lam, allowed)
  return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)


@jax.jit
def _curve(inst: Instance, lambdas: jax.Array, allowed: jax.Array):
  return jax.vmap(lambda lam: frontier_point(inst, lam, allowed))(lambdas)


def frontier_curve(inst: Instance, lambdas, allowed: jax.Array | None = None):
  r"""The frontier (L(π_λ), J(π_λ)) at each λ (this project's D4).

  .. math:: \big(L(\pi_\lambda), J(\pi_\lambda)\big),\quad
            \pi_\lambda = \arg\min_\pi L(\pi) - \lambda J(\pi)

  Args:
    inst: instance.
    lambdas: [K] values λ ≥ 0 (any finite magnitude).
    allowed: optional [X, Y] bool restriction (default: real responses).

  Returns:
    (sft_loss [K], reward [K]); L increases and J increases with λ.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> loss, rew = frontier_curve(inst, [0.0, 1e300])
    >>> [round(float(v), 3) for v in loss], [float(v) for v in rew]  # L ≈ ½ log(2λ) at λ = 1e300
    ([0.693, 345.734], [0.5, 1.0])

  References: this project's THEORY.md D4.
  """
  lambdas = jnp.asarray(lambdas, inst.data.dtype)
  return _curve(inst, jnp.atleast_1d(lambdas), allowed_responses(inst, allowed))


@jax.jit
def max_reward(inst: Instance, allowed: jax.Array | None = None) -> jax.Array:
  r"""sup of J over tabular policies, J_max = E_w[max_y r(x, y)] (reached only as λ → ∞).

  Args:
    inst: instance.
    allowed: optional [X, Y] bool restriction (default: real responses).

  Returns:
    [] J_max.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([0.5, 0.5], [[0.5, 0.5], [1.0, 0.0]], [[0.0, 1.0], [2.0, 3.0]], 1.0)
    >>> float(max_reward(inst))
    2.0
  """
  best = jnp.max(jnp.where(allowed_responses(inst, allowed), inst.reward, NEG_INF), -1)
  return obj.expect(inst, best)


def _log_gaps(inst: Instance, allowed: jax.Array | None) -> jax.Array:
  allowed = allowed_responses(inst, allowed)
  r_max = jnp.max(jnp.where(allowed, inst.reward, NEG_INF), axis=-1, keepdims=True)
  return safe_log(jnp.where(allowed, r_max - inst.reward, 0.0))


@jax.jit
def reward_deficit(inst: Instance, log_pi: jax.Array, allowed: jax.Array | None = None):
  r"""J_max − J(π) = E_w[Σ_y π(y|x) (max_y r(x,·) − r(x, y))], as a sum of non-negative terms.

  Accurate even when π is within rounding of the best response (J itself would round to J_max).
  Below ~1e-308 it underflows to 0: use :func:`log_reward_deficit` there.

  Args:
    inst: instance.
    log_pi: [X, Y] policy log-probabilities.
    allowed: optional [X, Y] bool restriction defining max r (default: real responses).

  Returns:
    [] J_max − J(π) ≥ 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> f"{float(reward_deficit(inst, jnp.array([[-40.0, 0.0]]))):.6e}"  # e^-40, J rounds to 1
    '4.248354e-18'
  """
  allowed = allowed_responses(inst, allowed)
  r_max = jnp.max(jnp.where(allowed, inst.reward, NEG_INF), axis=-1, keepdims=True)
  pi = jnp.exp(log_pi)
  gap = jnp.where(allowed, r_max - inst.reward, 0.0)
  return obj.expect(inst, jnp.sum(jnp.where(allowed & (pi > 0), pi * gap, 0.0), axis=-1))


@jax.jit
def log_reward_deficit(inst: Instance, log_pi: jax.Array,
                       allowed: jax.Array | None = None) -> jax.Array:
  r"""log(J_max − J(π)) = logsumexp over (x, y) of log w_x + log π(y|x) + log(max r − r(x, y)).

  Keeps its relative precision at any magnitude: π*_β(d) at β = 1e-6 has a deficit near e^{-1e6}.

  Args:
    inst: instance.
    log_pi: [X, Y] policy log-probabilities.
    allowed: optional [X, Y] bool restriction defining max r (default: real responses).

  Returns:
    [] the log deficit (-inf when π puts all its mass on best responses).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(log_reward_deficit(inst, jnp.array([[-1000.0, 0.0]])))
    -1000.0
  """
  terms = jnp.where(allowed_responses(inst, allowed), log_pi + _log_gaps(inst, allowed), NEG_INF)
  per_prompt = jax.nn.logsumexp(terms, axis=-1)
  return log_expect(inst, per_prompt)


@jax.jit
def frontier_at_log_deficit(inst: Instance, log_deficit, allowed: jax.Array | None = None):
  r"""min{L(π) : J_max − J(π) ≤ Δ*} and the log λ that attains it, from log Δ* (this project's D4).

  .. math:: \min\{L(\pi) : \Delta(\pi) \le \Delta^*\}
            = \max_{\lambda\ge 0}\; L(\pi_\lambda) + \lambda\,(\Delta(\pi_\lambda) - \Delta^*)

  The root of Δ(π_λ) = Δ* in log λ (bisection on asinh(log λ) over a bracket built from Δ*; see
  the module docstring) and the dual value there, which is first-order insensitive to the error
  of λ. For Δ* ≥ Δ(d) the answer is (−∞, L(d)); for Δ* = 0 < Δ(d) it is (+∞, +∞).

  Args:
    inst: instance.
    log_deficit: [] log Δ* (any magnitude: Δ* = e^{-1e6} is fine).
    allowed: optional [X, Y] bool restriction.

  Returns:
    (log_lam [], min_sft_loss []).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> log_lam, loss = frontier_at_log_deficit(inst, -1000.0)  # λ ≈ e^1000 / 2
    >>> round(float(log_lam), 6), round(float(loss), 6)  # π_λ ≈ (e^-1000, 1): L = 1000 / 2
    (999.306853, 500.0)

  References: this project's THEORY.md D4.
  """
  log_deficit = jnp.asarray(log_deficit, inst.data.dtype)
  prompts = prompt_geometries(inst, allowed)
  sols0, _, at_data, safe_target, safe_d0 = solve_at_data(inst, prompts, log_deficit)
  unreachable = ~at_data & (log_deficit == NEG_INF)
  ell, sols, log_def = search_log_lambda(inst, prompts, safe_target, safe_d0)
  # The dual value L(π_λ) + λ (Δ(π_λ) − Δ*): a lower bound for every λ, first-order exact.
  dual = (support_sft_loss(inst, prompts, sols) + jnp.exp(ell + log_def)
          - jnp.exp(ell + safe_target))
  loss_0 = support_sft_loss(inst, prompts, sols0)
  ell = jnp.where(at_data, NEG_INF, jnp.where(unreachable, jnp.inf, ell))
  loss = jnp.where(at_data, loss_0,
                   jnp.where(unreachable, jnp.inf, jnp.maximum(dual, loss_0)))
  return ell, loss


def frontier_at_reward(inst: Instance, reward_target, allowed: jax.Array | None = None):
  r"""min{L(π) : J(π) ≥ J*} and the λ that attains it (this project's D4).

  .. math:: \min\{L(\pi) : J(\pi) \ge J^*\} = L(\pi_{\lambda^*}),\quad J(\pi_{\lambda^*}) = J^*

  Through :func:`frontier_at_log_deficit` (jit-compiled) with Δ* = J_max − J*. For J* ≤ J(d)
  the answer is (0, L(d)); for J* ≥ J_max no policy reaches J* (unless d already does) and the
  answer is (+∞, +∞). J* is a float, so Δ* is only as precise as J_max − J* allows; for targets
  within rounding of J_max pass log Δ* to :func:`frontier_at_log_deficit` directly.

  Args:
    inst: instance.
    reward_target: [] J*.
    allowed: optional [X, Y] bool restriction.

  Returns:
    (lam [], min_sft_loss []).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> lam, loss = frontier_at_reward(inst, 0.75)  # π_λ = (1/4, 3/4): ν = 2, λ = 4/3
    >>> round(float(lam), 6), round(float(loss), 6)
    (1.333333, 0.836988)

  References: this project's THEORY.md D4.
  """
  target = jnp.asarray(reward_target, inst.data.dtype)
  deficit = max_reward(inst, allowed) - target
  ell, loss = frontier_at_log_deficit(inst, safe_log(jnp.maximum(deficit, 0.0)), allowed)
  beyond = deficit < 0
  return (jnp.where(beyond, jnp.inf, jnp.exp(ell)), jnp.where(beyond, jnp.inf, loss))


@jax.jit
def decoupling_regret(inst: Instance, log_pi: jax.Array,
                      allowed: jax.Array | None = None) -> jax.Array:
  r"""Decoupling regret L(π) − min{L(π′) : J(π′) ≥ J(π)} ≥ 0 (this project's D4).

  .. math:: \mathrm{regret}(\pi) = \min_{\lambda \ge 0} E_w\Big[\sum_{S} d\,\varphi\big(\log
            \tfrac{\pi}{\pi_\lambda}\big) + \sum_{y \notin S} \pi\,\lambda\,(\max r - r)
            + \kappa_\lambda\big(1 - \textstyle\sum_S \pi\big)\Big],\quad \varphi(u) = e^u - 1 - u

  The SFT loss π gives up beyond what is needed for its reward: L(π) − L(d) = E_w KL(d‖π) when
  J(π) ≤ J(d), and 0 exactly on the frontier. Evaluated in the dual (Bregman) form above at λ = 0
  and at the root λ* of J(π_λ) = J(π) (module docstring), a sum of non-negative terms that keeps
  its precision where L(π) and the frontier's loss are both of size |r|/β (π*_β at tiny β).

  Args:
    inst: instance.
    log_pi: [X, Y] policy log-probabilities.
    allowed: optional [X, Y] bool restriction of the comparison class (default: real responses).
      It must contain supp d and the support of π (else the result is NaN).

  Returns:
    [] regret in nats (+inf if π misses part of supp d).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.3, 0.2]], [[1.0, 0.0, -1.0]], 1e-3)
    >>> round(float(decoupling_regret(inst, rl_path_policy(inst, 1e-3))), 6)  # ≈ 0.2/β
    199.605958

  References: this project's THEORY.md D4.
  """
  allowed_ = allowed_responses(inst, allowed)
  prompts = prompt_geometries(inst, allowed)
  log_target = log_reward_deficit(inst, log_pi, allowed)
  sols0, _, at_data, safe_target, safe_d0 = solve_at_data(inst, prompts, log_target)
  ell, sols, _ = search_log_lambda(inst, prompts, safe_target, safe_d0)
  # The bound at λ = 0 (= E_w KL(d‖π)) and at the root, in one vmapped evaluation.
  ells = jnp.stack([jnp.asarray(NEG_INF, ell.dtype), ell])
  both = jax.tree.map(lambda a, b: jnp.stack([a, b]), sols0, sols)
  per_prompt = jax.vmap(jax.vmap(prompt_regret_bound, in_axes=(0, 0, None, 0)),
                        in_axes=(None, 0, 0, None))(prompts, both, ells, log_pi)
  at_zero, at_root = jax.vmap(lambda v: obj.expect(inst, v))(per_prompt)
  regret = jnp.where(at_data, at_zero, jnp.minimum(at_zero, at_root))
  real = (inst.prompt_weights > 0)[:, None] & inst.response_mask
  outside = real & ~allowed_ & ((inst.data > 0) | (log_pi > NEG_INF))
  return jnp.where(jnp.any(outside), jnp.nan, regret)


def rl_path_instance(inst: Instance, beta) -> Instance:
  """The instance of SFT-then-RL: reference = data (the exact SFT optimum), KL coefficient β.

  Args:
    inst: instance.
    beta: [] β > 0.

  Returns:
    The instance with ρ = d and the given β (π*_β of it is :func:`rl_path_policy`).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.9, 0.1]])
    >>> rl_path_instance(inst, 0.5).reference.tolist(), float(rl_path_instance(inst, 0.5).beta)
    ([[0.5, 0.5]], 0.5)
  """
  return dataclasses.replace(rl_stage_after_sft(inst), beta=jnp.asarray(beta, inst.data.dtype))


@jax.jit
def rl_path_policy(inst: Instance, beta) -> jax.Array:
  r"""log π*_β(d): the exact RL optimum started from the SFT optimum (ρ = d), for one β.

  .. math:: \log\pi^*_\beta(y|x) = \log d(y|x) - \frac{g(x,y)}{\beta}
            - \log\sum_{y'} d(y'|x)\, e^{-g(x,y')/\beta},\qquad g = \max_{\mathrm{supp}\,d_x} r - r

  The gap form: exponents are ≤ 0 and the best responses of supp d have exponent exactly 0, so
  every entry keeps its relative precision for any β (r/β − log Z would cancel at tiny β).

  Args:
    inst: instance (data d, reward r).
    beta: [] β > 0.

  Returns:
    [X, Y] log π*_β(d) (-inf off supp d).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> [round(float(v), 4) for v in jnp.exp(rl_path_policy(inst, 1.0))[0]]
    [0.2689, 0.7311]
    >>> float(rl_path_policy(inst, 1e-6)[0, 0])  # −1/β, exactly
    -1000000.0

  References: arXiv 2601.07389 Eq. (8) with ρ = d; this project's THEORY.md D4.
  """
  beta = jnp.asarray(beta, inst.data.dtype)
  on_s = inst.response_mask & (inst.data > 0)
  best = jnp.max(jnp.where(on_s, inst.reward, NEG_INF), axis=-1, keepdims=True)
  best = jnp.where(jnp.isfinite(best), best, 0.0)
  logits = jnp.where(on_s, safe_log(inst.data) - (best - inst.reward) / beta, NEG_INF)
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  return jnp.where(on_s, logits - jnp.where(jnp.isfinite(log_z), log_z, 0.0), NEG_INF)


@jax.jit
def rl_path(inst: Instance, betas) -> jax.Array:
  r"""[K, X, Y] log π*_β(d) for each β (the exact RL path from the SFT optimum).

  .. math:: \pi^*_\beta(y|x) \propto d(y|x)\, e^{r(x,y)/\beta},\quad \beta \in \{\beta_k\}

  Args:
    inst: instance.
    betas: [K] values β > 0.

  Returns:
    [K, X, Y] log-probabilities (:func:`rl_path_policy` for each β).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> rl_path(inst, [1.0, 2.0]).shape
    (2, 1, 2)
  """
  betas = jnp.atleast_1d(jnp.asarray(betas, inst.data.dtype))
  return jax.vmap(lambda b: rl_path_policy(inst, b))(betas)


@jax.jit
def _rl_curve(inst: Instance, betas: jax.Array):
  def one(b):
    log_pi = rl_path_policy(inst, b)
    return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)
  return jax.vmap(one)(betas)


def rl_path_curve(inst: Instance, betas):
  r"""(sft_loss [K], reward [K]) along the exact RL path π*_β(d): (L(π*_β), J(π*_β)).

  Args:
    inst: instance.
    betas: [K] values β > 0.

  Returns:
    (sft_loss [K], reward [K]).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> loss, rew = rl_path_curve(inst, [1e-3])
    >>> round(float(loss[0]), 6), float(rew[0])  # L ≈ 1/(2β), J = 1 to rounding
    (500.0, 1.0)
  """
  betas = jnp.atleast_1d(jnp.asarray(betas, inst.data.dtype))
  return _rl_curve(inst, betas)


@jax.jit
def _rl_regret(inst: Instance, betas: jax.Array):
  return jax.vmap(lambda b: decoupling_regret(inst, rl_path_policy(inst, b)))(betas)


def rl_path_regret(inst: Instance, betas) -> jax.Array:
  r"""[K] decoupling regret of π*_β(d) for each β (0 only in degenerate cases; this project's D4).

  .. math:: L(\pi^*_\beta) - \min\{L(\pi) : J(\pi) \ge J(\pi^*_\beta)\}

  Args:
    inst: instance.
    betas: [K] values β > 0 (each compiled call takes the same K).

  Returns:
    [K] regrets in nats (:func:`decoupling_regret` of :func:`rl_path_policy`).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> [abs(round(float(v), 9)) for v in rl_path_regret(inst, [1e-6, 1.0, 1e6])]  # 1 prompt, 2 y
    [0.0, 0.0, 0.0]
  """
  betas = jnp.atleast_1d(jnp.asarray(betas, inst.data.dtype))
  return _rl_regret(inst, betas)
