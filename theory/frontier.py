r"""The exact Pareto frontier of SFT loss against reward, and decoupling regret.

This module implements **this project's** result D4 (THEORY.md part D; not the paper's).

L(π) = E_w[Σ_y d log(1/π)] is convex and J(π) = E_w[Σ_y π r] linear in π, so every Pareto-optimal
(L, J) pair over tabular policies is reached by

.. math:: \pi_\lambda = \arg\min_\pi\; L(\pi) - \lambda J(\pi),\qquad \lambda \ge 0.

The prompt weights w_x multiply both terms, so the problem splits per prompt. With S = supp d_x the
KKT conditions give π_λ(y) = d(y) / (ν − λ r(y)) on S, with ν > λ max_S r solving Σ_S π_λ = 1 (a
monotone 1-D root). Off S only a response u maximising r off S can carry mass, and only if
r(u) > max_S r: if s = Σ_S d / (λ r(u) − λ r) ≤ 1 then ν = λ r(u) and π_λ(u) = 1 − s; otherwise the
root on S applies. Several maximisers off S share the mass equally (L and J do not see the split).

We solve for t = ν − λ max_S r, which lies in [d_top, 1] (d_top = data mass on argmax_S r), by
bisection in log t with a fixed number of steps (so it jit-compiles once per shape) and a Newton
polish on 1/g(t) − 1, g(t) = Σ_S d / (t + λ (max_S r − r)).

Decoupling regret of a policy π: L(π) − min{L(π′) : J(π′) ≥ J(π)} ≥ 0. The minimum is computed by
bisection on log λ for J(π_λ) = J(π) and read off through the dual bound
D(λ) = L(π_λ) − λ (J(π_λ) − J(π)) ≤ min{...} (weak duality), maximised over the bracket; so the
returned regret is ≥ 0 up to rounding for every π (L(π) − D(λ) ≥ 0 is the optimality of π_λ).
When J(π) ≤ J(d) the minimum is L(d) and the regret is L(π) − L(d) = E_w KL(d‖π).

All functions are unbatched (one instance); batch with ``jax.vmap`` (pad instances with
``theory.instance.pad_instance``: weight-0 prompts and masked responses are respected).

References: this project's THEORY.md D4; arXiv 2601.07389 for L and J.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from . import objectives as obj
from ._numerics import NEG_INF, masked_max
from .instance import Instance, rl_stage_after_sft

__all__ = [
    "ROOT_STEPS", "REGRET_STEPS", "LAMBDA_MIN", "LAMBDA_MAX",
    "frontier_row", "frontier_policy", "frontier_point", "frontier_curve",
    "frontier_at_reward", "decoupling_regret",
    "rl_path_instance", "rl_path_policy", "rl_path", "rl_path_curve", "rl_path_regret",
    "max_reward", "reward_deficit",
]

ROOT_STEPS = 72      # bisection steps in log t (range <= ~745 nats -> below 1e-19 relative)
NEWTON_STEPS = 2     # polish on 1/g(t) - 1 (exact when lambda = 0)
REGRET_STEPS = 100   # bisection steps in log lambda over [LAMBDA_MIN, LAMBDA_MAX]
LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e250  # tiny β puts π*_β within e^{-1/β} of the best response
def frontier_row(data: jax.Array, reward: jax.Array, allowed: jax.Array,
                 lam: jax.Array) -> jax.Array:
  r"""One prompt of the frontier: log π_λ = argmin_π Σ d log(1/π) − λ Σ π r over the simplex.

  .. math:: \pi_\lambda(y) = \frac{d(y)}{\nu - \lambda r(y)}\ (y \in S),\qquad
            \pi_\lambda(u) = 1 - \sum_S \frac{d}{\lambda r(u) - \lambda r}\ \text{(off support)}

  Args:
    data: [Y] d(·|x) (rows are renormalised over ``allowed``).
    reward: [Y] r(x, ·).
    allowed: [Y] bool, the responses a policy may use (real responses).
    lam: [] λ ≥ 0 (finite).

  Returns:
    [Y] log π_λ(·|x), -inf where π_λ has no mass.

  References: this project's THEORY.md D4.
  """
  dtype = data.dtype
  lam = jnp.asarray(lam, dtype)
  on_s = allowed & (data > 0)
  off_s = allowed & ~(data > 0)
  d = jnp.where(on_s, data, 0.0)
  d = d / jnp.sum(d)
  r = jnp.where(allowed, reward, 0.0)
  r_s_max = masked_max(r, on_s)
  delta = jnp.where(on_s, lam * (r_s_max - r), 0.0)  # >= 0 on S
  d_top = jnp.sum(jnp.where(on_s & (r >= r_s_max), d, 0.0))

  def g(t):
    return jnp.sum(jnp.where(on_s, d / (t + delta), 0.0))

  def bisect(_, lo_hi):
    lo, hi = lo_hi
    mid = 0.5 * (lo + hi)
    above = g(jnp.exp(mid)) > 1.0  # root lies right of mid (g decreasing)
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo0 = jnp.log(d_top) - 1e-12
  hi0 = jnp.asarray(1e-12, dtype)
  lo, hi = jax.lax.fori_loop(0, ROOT_STEPS, bisect, (lo0, hi0))
  t_lo, t_hi = jnp.exp(lo), jnp.exp(hi)
  t = 0.5 * (t_lo + t_hi)

  def newton(_, t):
    gt = g(t)
    dg = jnp.sum(jnp.where(on_s, d / (t + delta) ** 2, 0.0))  # = -g'(t)
    # phi(t) = 1/g(t) is close to linear; phi'(t) = dg / g^2.
    step = (1.0 / gt - 1.0) * gt * gt / dg
    return jnp.clip(t - step, t_lo, t_hi)

  t_root = jax.lax.fori_loop(0, NEWTON_STEPS, newton, t)

  # Off-support case: a maximiser u of r off S, strictly better than every response on S.
  r_off_max = masked_max(r, off_s)
  any_off = jnp.any(off_s)
  gap = jnp.where(any_off, r_off_max - r_s_max, 0.0)
  t_u = lam * gap
  active = any_off & (lam > 0) & (gap > 0) & (t_u > t_root)  # s = g(t_u) < 1
  t_star = jnp.where(active, t_u, t_root)
  log_pi_s = jnp.log(jnp.where(on_s, d, 1.0)) - jnp.log(t_star + delta)
  ties = off_s & (r >= r_off_max)
  n_ties = jnp.maximum(jnp.sum(ties), 1).astype(dtype)
  s = g(jnp.where(active, t_u, 1.0))
  log_pi_u = jnp.log1p(-jnp.minimum(s, 1.0)) - jnp.log(n_ties)
  return jnp.where(on_s, log_pi_s, jnp.where(active & ties, log_pi_u, NEG_INF))


def _allowed(inst: Instance, allowed: jax.Array | None) -> jax.Array:
  return inst.response_mask if allowed is None else allowed & inst.response_mask


@jax.jit
def frontier_policy(inst: Instance, lam, allowed: jax.Array | None = None) -> jax.Array:
  r"""The frontier policy π_λ = argmin L(π) − λ J(π) over tabular policies (this project's D4).

  Args:
    inst: instance (data d, reward r, response_mask).
    lam: [] λ ≥ 0; λ = 0 gives π = d, large λ concentrates on the best responses.
    allowed: optional [X, Y] bool restricting the responses a policy may use (default: all real
      responses, ``inst.response_mask``).

  Returns:
    [X, Y] log π_λ (-inf where no mass).

  >>> from nondecoupling.theory.instance import make_instance
  >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
  >>> import jax.numpy as jnp
  >>> [round(float(v), 4) for v in jnp.exp(frontier_policy(inst, 0.0))[0]]
  [0.5, 0.5]

  References: this project's THEORY.md D4.
  """
  lam = jnp.asarray(lam, inst.data.dtype)
  row = functools.partial(frontier_row, lam=lam)
  return jax.vmap(row)(inst.data, inst.reward, _allowed(inst, allowed))


def frontier_point(inst: Instance, lam, allowed: jax.Array | None = None):
  """(L(π_λ), J(π_λ)) for one λ (this project's D4)."""
  log_pi = frontier_policy(inst, lam, allowed)
  return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)


@jax.jit
def _curve(inst: Instance, lambdas: jax.Array, allowed: jax.Array):
  return jax.vmap(lambda lam: frontier_point(inst, lam, allowed))(lambdas)


def frontier_curve(inst: Instance, lambdas, allowed: jax.Array | None = None):
  r"""The frontier (L(π_λ), J(π_λ)) at each λ (this project's D4).

  Args:
    inst: instance.
    lambdas: [K] values λ ≥ 0.
    allowed: optional [X, Y] bool restriction (default: real responses).

  Returns:
    (sft_loss [K], reward [K]); L increases and J increases with λ.

  References: this project's THEORY.md D4.
  """
  lambdas = jnp.asarray(lambdas, inst.data.dtype)
  return _curve(inst, jnp.atleast_1d(lambdas), _allowed(inst, allowed))


def max_reward(inst: Instance, allowed: jax.Array | None = None) -> jax.Array:
  """sup of J over tabular policies: E_w[max_y r(x, y)] (reached only in the limit λ → ∞)."""
  return obj.expect(inst, jnp.max(jnp.where(_allowed(inst, allowed), inst.reward, NEG_INF), -1))


def reward_deficit(inst: Instance, log_pi: jax.Array, allowed: jax.Array | None = None):
  r"""J_max − J(π) = E_w[Σ_y π(y|x) (max_y r(x,·) − r(x, y))], as a sum of non-negative terms.

  Accurate even when π is within rounding of the best response (J itself would round to J_max),
  which is where the regret of π*_β for small β is decided.
  """
  allowed = _allowed(inst, allowed)
  r_max = jnp.max(jnp.where(allowed, inst.reward, NEG_INF), axis=-1, keepdims=True)
  pi = jnp.exp(log_pi)
  gap = jnp.where(allowed, r_max - inst.reward, 0.0)
  return obj.expect(inst, jnp.sum(jnp.where(pi > 0, pi * gap, 0.0), axis=-1))


def _frontier_at_deficit(inst: Instance, deficit, allowed):
  dtype = inst.data.dtype

  def point(log_lam):
    log_pi = frontier_policy(inst, jnp.exp(log_lam), allowed)
    return obj.sft_loss(inst, log_pi), reward_deficit(inst, log_pi, allowed)

  def bisect(_, lo_hi):
    lo, hi = lo_hi
    mid = 0.5 * (lo + hi)
    _, def_mid = point(mid)
    reach = def_mid <= deficit
    return jnp.where(reach, lo, mid), jnp.where(reach, mid, hi)

  lo0 = jnp.log(jnp.asarray(LAMBDA_MIN, dtype))
  hi0 = jnp.log(jnp.asarray(LAMBDA_MAX, dtype))
  lo, hi = jax.lax.fori_loop(0, REGRET_STEPS, bisect, (lo0, hi0))

  def dual(log_lam):
    # D(λ) = L(π_λ) − λ (J(π_λ) − J*) = L(π_λ) + λ (Δ(π_λ) − Δ*), a lower bound for every λ.
    l_val, def_val = point(log_lam)
    lam = jnp.exp(log_lam)
    return l_val + lam * (def_val - deficit), lam

  d_lo, lam_lo = dual(lo)
  d_hi, lam_hi = dual(hi)
  d_zero = obj.sft_optimum_loss(inst)
  best = jnp.maximum(d_zero, jnp.maximum(d_lo, d_hi))
  lam = jnp.where(best == d_zero, 0.0, jnp.where(d_lo >= d_hi, lam_lo, lam_hi))
  return lam, best


@jax.jit
def frontier_at_reward(inst: Instance, reward_target, allowed: jax.Array | None = None):
  r"""min{L(π) : J(π) ≥ J*} and the λ that attains it (this project's D4).

  Bisection on log λ ∈ [LAMBDA_MIN, LAMBDA_MAX] for J(π_λ) = J* (J(π_λ) is non-decreasing in λ),
  read off through the dual bound D(λ) = L(π_λ) − λ (J(π_λ) − J*), which never exceeds the
  minimum (weak duality) and equals it at the root; the best of D(0) = L(d), D(λ_lo), D(λ_hi) is
  returned. For J* ≤ J(d) the answer is (0, L(d)). For J* ≥ sup J no finite answer exists; the
  returned loss is then the dual bound at LAMBDA_MAX.

  Args:
    inst: instance.
    reward_target: [] J*.
    allowed: optional [X, Y] bool restriction.

  Returns:
    (lam [], min_sft_loss []).

  References: this project's THEORY.md D4.
  """
  target = jnp.asarray(reward_target, inst.data.dtype)
  return _frontier_at_deficit(inst, max_reward(inst, allowed) - target, allowed)


@jax.jit
def decoupling_regret(inst: Instance, log_pi: jax.Array,
                      allowed: jax.Array | None = None) -> jax.Array:
  r"""Decoupling regret L(π) − min{L(π′) : J(π′) ≥ J(π)} ≥ 0 (this project's D4).

  The SFT loss π gives up beyond what is needed for its reward. It is L(π) − L(d) = E_w KL(d‖π)
  when J(π) ≤ J(d), and 0 exactly on the frontier. The reward constraint is evaluated through
  the deficit J_max − J (:func:`reward_deficit`), so policies within rounding of the best
  response (π*_β for tiny β) are still placed correctly.

  Args:
    inst: instance.
    log_pi: [X, Y] policy log-probabilities.
    allowed: optional [X, Y] bool restriction of the comparison class (default: real responses).

  Returns:
    [] regret in nats (≥ 0 up to rounding; +inf if π misses part of supp d).

  References: this project's THEORY.md D4.
  """
  deficit = reward_deficit(inst, log_pi, allowed)
  return obj.sft_loss(inst, log_pi) - _frontier_at_deficit(inst, deficit, allowed)[1]


def rl_path_instance(inst: Instance, beta) -> Instance:
  """The instance of SFT-then-RL: reference = data (the exact SFT optimum), KL coefficient β."""
  return dataclasses.replace(rl_stage_after_sft(inst), beta=jnp.asarray(beta, inst.data.dtype))


def rl_path_policy(inst: Instance, beta) -> jax.Array:
  r"""log π*_β(d): the exact RL optimum started from the SFT optimum (ρ = d), for one β.

  .. math:: \pi^*_\beta(y|x) = d(y|x)\, e^{r(x,y)/\beta} / \sum_{y'} d(y'|x) e^{r(x,y')/\beta}
  """
  return obj.gibbs_tilt(rl_path_instance(inst, beta))


def rl_path(inst: Instance, betas) -> jax.Array:
  """[K, X, Y] log π*_β(d) for each β (the exact RL path from the SFT optimum)."""
  betas = jnp.atleast_1d(jnp.asarray(betas, inst.data.dtype))
  return jax.vmap(lambda b: rl_path_policy(inst, b))(betas)


@jax.jit
def _rl_curve(inst: Instance, betas: jax.Array):
  def one(b):
    log_pi = rl_path_policy(inst, b)
    return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)
  return jax.vmap(one)(betas)


def rl_path_curve(inst: Instance, betas):
  """(sft_loss [K], reward [K]) along the exact RL path π*_β(d)."""
  betas = jnp.atleast_1d(jnp.asarray(betas, inst.data.dtype))
  return _rl_curve(inst, betas)


@jax.jit
def _rl_regret(inst: Instance, betas: jax.Array):
  return jax.vmap(lambda b: decoupling_regret(inst, rl_path_policy(inst, b)))(betas)


def rl_path_regret(inst: Instance, betas) -> jax.Array:
  """[K] decoupling regret of π*_β(d) for each β (0 only in degenerate cases; this project's D4)."""
  betas = jnp.atleast_1d(jnp.asarray(betas, inst.data.dtype))
  return _rl_regret(inst, betas)
