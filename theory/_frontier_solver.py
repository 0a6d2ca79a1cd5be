r"""The solver behind theory/frontier.py (this project's D4): one prompt at ℓ = log λ, and λ.

One prompt. With S = supp d ∩ allowed, δ = max_S r − r and gap = max r − r (max over the allowed
responses), π_λ = argmin_π Σ_S d log(1/π) − λ Σ π r is

.. math:: \pi_\lambda(y) = \frac{d(y)}{t + \lambda\,\delta(y)}\ (y \in S),\qquad
          \sum_S \frac{d}{t + \lambda\delta} = 1,\quad t = \nu - \lambda \max_S r,

unless a response u off S has r(u) = max r > max_S r and λ (max r − max_S r) > t: then
π_λ = d/(λ gap) on S and the rest, 1 − s, goes to u (shared equally by ties).
t ∈ [d_top, Σ_S d] (d_top: the data mass on argmax_S r) is found by bisection in log t and a
Newton polish on 1/g(t), g(t) = Σ_S d/(t + λδ) (1/g is concave, so Newton from the left end
never overshoots). λ enters only through ℓ: λδ = e^{ℓ + log δ} may overflow to +inf, and its terms
then vanish, as they should; log π_λ = log d − logaddexp(log t, ℓ + log δ).

The regret bound of a policy π at λ (:func:`prompt_regret_bound`) is the Bregman divergence of
Σ_S d log(1/π) + λ Σ π gap between π and π_λ,

.. math:: \sum_S d\,\varphi(\log\pi - \log\pi_\lambda) + \sum_{y \notin S} \pi\,\lambda\,
          \mathrm{gap} + \kappa\,(1 - \textstyle\sum_S \pi),\qquad \varphi(u) = e^u - 1 - u,
          \quad \kappa = \nu - \lambda \max r \ge 0,

a sum of non-negative terms; log π − log π_λ is formed as (log π + ℓ) + ..., a sum of two numbers
that cancel exactly in floating point when both are large (π*_β at β = 1e-6 has log π ≈ −1e6).

All prompts. Δ(π_λ) = E_w Σ π_λ gap decreases in λ; Δ(π_λ) = Δ* is solved by bisection on
asinh(ℓ) (64 steps reach the rounding of ℓ at any magnitude) over a bracket built from Δ*:
ℓ_hi = log 2 + max(log(W M) − log Δ*, max_x log(m_x / (max r − max_S r))), beyond which every
prompt has Δ_x ≤ m_x/λ, and ℓ_lo = log(m_min (Δ(π_0) − Δ*) / (W A²)), below which Pinsker's
inequality keeps Δ(π_0) − Δ(π_λ) ≤ W A² λ / (2 m_min) under Δ(π_0) − Δ*; W = Σ w, m_x = Σ_S d
(M and m_min its extremes), A the largest reward range. No cap: λ = e^{2e6} is as easy as λ = 1.

References: this project's THEORY.md D4.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import objectives as obj
from ._numerics import NEG_INF, expm1_minus_x, masked_max, masked_min, safe_log
from .instance import Instance

__all__ = ["ROOT_STEPS", "NEWTON_STEPS", "REGRET_STEPS", "PromptGeometry", "PromptSolution",
           "prompt_geometry", "solve_prompt", "solve_prompt_at_zero", "prompt_log_deficit",
           "prompt_regret_bound", "allowed_responses", "prompt_geometries", "solve_prompts",
           "log_expect", "log_deficit", "support_sft_loss", "log_lambda_bracket", "solve_at_data",
           "search_log_lambda"]

ROOT_STEPS = 32     # bisection steps in log t over [log d_top, log Σ_S d] (width <= 745 nats)
NEWTON_STEPS = 3    # Newton polish of t on 1/g(t) from the left end of the bracket
REGRET_STEPS = 64   # bisection steps in asinh(log λ) (width <= 1420: below float64 rounding)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PromptGeometry:
  """What D4 needs of one prompt, independent of λ ([Y] arrays, [] scalars)."""

  on_s: jax.Array       # [Y] S = supp d ∩ allowed
  off_s: jax.Array      # [Y] allowed responses outside S
  data: jax.Array       # [Y] d on S, 0 elsewhere
  log_data: jax.Array   # [Y] log d on S, -inf elsewhere
  log_delta: jax.Array  # [Y] log(max_S r − r) on S (-inf at the best of S and off S)
  log_gap: jax.Array    # [Y] log(max r − r) on allowed responses (-inf at the best, off allowed)
  best_off: jax.Array   # [Y] responses off S with r = max r > max_S r (they share π_λ(u))
  log_gap_s: jax.Array  # [] log(max r − max_S r) (-inf when S holds a best response)
  log_top: jax.Array    # [] log of the data mass on argmax_S r
  log_mass: jax.Array   # [] log Σ_S d (0 up to rounding unless ``allowed`` cuts supp d)
  spread: jax.Array     # [] max r − min r over the allowed responses


def prompt_geometry(data: jax.Array, reward: jax.Array, allowed: jax.Array) -> PromptGeometry:
  """The λ-free part of one prompt: S, log d, log δ, log gap, d_top, Σ_S d, the reward range.

  Args:
    data: [Y] d(·|x).
    reward: [Y] r(x, ·).
    allowed: [Y] bool, the responses a policy may use.

  Returns:
    The prompt's :class:`PromptGeometry`.
  """
  on_s = allowed & (data > 0)
  has_s = jnp.any(on_s)
  r = jnp.where(allowed, reward, 0.0)
  r_s = jnp.where(has_s, masked_max(r, on_s), 0.0)
  r_best = masked_max(r, allowed)
  gap_s = jnp.where(has_s, r_best - r_s, 0.0)
  d = jnp.where(on_s, data, 0.0)
  top = on_s & (r >= r_s)
  return PromptGeometry(
      on_s=on_s, off_s=allowed & ~on_s, data=d, log_data=safe_log(d),
      log_delta=safe_log(jnp.where(on_s, r_s - r, 0.0)),
      log_gap=safe_log(jnp.where(allowed, r_best - r, 0.0)),
      best_off=allowed & ~on_s & (r >= r_best) & (gap_s > 0), log_gap_s=safe_log(gap_s),
      log_top=jnp.log(jnp.where(has_s, jnp.sum(jnp.where(top, d, 0.0)), 1.0)),
      log_mass=jnp.log(jnp.where(has_s, jnp.sum(d), 1.0)),
      spread=r_best - masked_min(r, allowed))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PromptSolution:
  """π_λ of one prompt at one ℓ = log λ."""

  log_pi: jax.Array   # [Y] log π_λ (-inf where no mass)
  log_t: jax.Array    # [] log(ν − λ max_S r) of the root on S
  active: jax.Array   # [] bool: the best responses off S carry mass (ν = λ max r)
  kappa: jax.Array    # [] ν − λ max r >= 0


def solve_prompt(prompt: PromptGeometry, ell: jax.Array) -> PromptSolution:
  r"""π_λ of one prompt at ℓ = log λ (module docstring), for any ℓ ∈ [−∞, float max).

  .. math:: \log\pi_\lambda(y) = \log d(y) - \mathrm{logaddexp}(\log t, \ell + \log\delta(y))
            \quad (y \in S,\ \text{no mass off } S)

  Args:
    prompt: the prompt's geometry.
    ell: [] log λ (−inf for λ = 0).

  Returns:
    The prompt's :class:`PromptSolution`.

  Examples:
    >>> import jax.numpy as jnp
    >>> prompt = prompt_geometry(jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0]),
    ...                          jnp.array([True, True]))
    >>> sol = solve_prompt(prompt, jnp.asarray(1000.0))  # λ = e^1000 is not a float; ℓ is
    >>> [round(float(v), 6) for v in sol.log_pi]  # log(½ / (½ + λ)) = log ½ − 1000, log(½ / ½)
    [-1000.693147, 0.0]
  """
  log_c = ell + prompt.log_delta  # log(λ δ): -inf at the best of S, may exceed 709 (c = +inf)
  c = jnp.exp(log_c)

  def g(t):
    return jnp.sum(jnp.where(prompt.on_s, prompt.data / (t + c), 0.0))

  def bisect(_, lo_hi):
    lo, hi = lo_hi
    mid = 0.5 * (lo + hi)
    above = g(jnp.exp(mid)) > 1.0  # g decreases: the root lies right of mid
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, ROOT_STEPS, bisect, (prompt.log_top, prompt.log_mass))
  t_lo, t_hi = jnp.exp(lo), jnp.exp(hi)

  def newton(_, t):
    q = jnp.where(prompt.on_s, prompt.data / (t + c), 0.0)
    g_t = jnp.sum(q)
    dg = jnp.sum(jnp.where(prompt.on_s, q / (t + c), 0.0))  # −g'(t), no underflow of (t + c)²
    return jnp.clip(t + (g_t - 1.0) * g_t / dg, t_lo, t_hi)  # Newton on 1/g(t) = 1

  t = jax.lax.fori_loop(0, NEWTON_STEPS, newton, t_lo)
  log_t = jnp.log(t)
  active = ell + prompt.log_gap_s > log_t  # λ (max r − max_S r) > t: s < 1
  on_s_inactive = prompt.log_data - jnp.logaddexp(log_t, log_c)
  on_s_active = prompt.log_data - ell - prompt.log_gap  # t + λδ = λ (max r − r)
  log_s = jax.nn.logsumexp(jnp.where(prompt.on_s, prompt.log_data - prompt.log_gap, NEG_INF)) - ell
  n_best = jnp.maximum(jnp.sum(prompt.best_off), 1).astype(t.dtype)
  log_u = jnp.log1p(-jnp.exp(jnp.minimum(log_s, 0.0))) - jnp.log(n_best)
  log_pi = jnp.where(prompt.on_s, jnp.where(active, on_s_active, on_s_inactive),
                     jnp.where(active & prompt.best_off, log_u, NEG_INF))
  kappa = jnp.where(active, 0.0, t - jnp.exp(ell + prompt.log_gap_s))
  return PromptSolution(log_pi=log_pi, log_t=log_t, active=active, kappa=kappa)


def solve_prompt_at_zero(prompt: PromptGeometry) -> PromptSolution:
  """π_0 = d / Σ_S d on S in closed form (t = ν = Σ_S d, κ = ν)."""
  return PromptSolution(log_pi=jnp.where(prompt.on_s, prompt.log_data - prompt.log_mass, NEG_INF),
                        log_t=prompt.log_mass, active=jnp.zeros((), bool),
                        kappa=jnp.exp(prompt.log_mass))


def prompt_log_deficit(prompt: PromptGeometry, sol: PromptSolution) -> jax.Array:
  """log Σ_y π_λ(y) (max r − r(y)) of one prompt (the best responses contribute 0)."""
  return jax.nn.logsumexp(jnp.where(prompt.on_s, sol.log_pi + prompt.log_gap, NEG_INF))


def prompt_regret_bound(prompt: PromptGeometry, sol: PromptSolution, ell: jax.Array,
                        log_pi: jax.Array) -> jax.Array:
  r"""Σ_S d φ(log π − log π_λ) + Σ_{y∉S} π λ gap + κ (1 − Σ_S π) for one prompt (module docstring).

  Args:
    prompt: the prompt's geometry.
    sol: π_λ at ``ell``.
    ell: [] log λ.
    log_pi: [Y] log π of the policy compared (supported on the allowed responses).

  Returns:
    [] the prompt's term, ≥ 0 (up to the rounding of Σ π = 1).
  """
  log_c = ell + prompt.log_delta
  big = log_c >= sol.log_t  # λδ >= t: log(t + λδ) = ℓ + log(δ + t/λ)
  # −log π_λ = a + b with a ∈ {ℓ, 0}; u = log π − log π_λ = (log π + a) + b cancels exactly.
  b = jnp.where(sol.active, prompt.log_gap,
                jnp.where(big, prompt.log_delta + jnp.log1p(jnp.exp(sol.log_t - log_c)),
                          sol.log_t + jnp.log1p(jnp.exp(log_c - sol.log_t)))) - prompt.log_data
  a = jnp.where(sol.active | big, ell, 0.0)
  u = jnp.where(prompt.on_s, (log_pi + a) + b, 0.0)
  # d φ(u) = d (e^u − 1 − u); for large u as e^{log d + u} − d (1 + u) (e^u alone may overflow
  # while d e^u does not: tiny d and w allow π/π_λ beyond e^709 at the root).
  big_u = u > 30.0
  d_phi = jnp.where(big_u, jnp.exp(prompt.log_data + jnp.where(big_u, u, 0.0))
                    - prompt.data * (1.0 + u), prompt.data * expm1_minus_x(jnp.where(big_u, 0.0, u)))
  on_s = jnp.sum(jnp.where(prompt.on_s, d_phi, 0.0))
  pi = jnp.exp(log_pi)
  lam_gap = jnp.exp((log_pi + ell) + prompt.log_gap)
  off_s = jnp.sum(jnp.where(prompt.off_s & (pi > 0), lam_gap, 0.0))
  outside = jnp.sum(jnp.where(prompt.off_s, pi, 0.0)) + (
      1.0 - jnp.sum(jnp.where(prompt.on_s | prompt.off_s, pi, 0.0)))
  return on_s + off_s + sol.kappa * outside


# ----------------------------------------------------------------------------- all prompts

def allowed_responses(inst: Instance, allowed: jax.Array | None) -> jax.Array:
  """[X, Y] the responses a policy may use: ``allowed`` (default all) among the real ones."""
  return inst.response_mask if allowed is None else allowed & inst.response_mask


def prompt_geometries(inst: Instance, allowed: jax.Array | None) -> PromptGeometry:
  """:func:`prompt_geometry` of every prompt (fields with a leading [X] axis)."""
  return jax.vmap(prompt_geometry)(inst.data, inst.reward, allowed_responses(inst, allowed))


def solve_prompts(prompts: PromptGeometry, ell: jax.Array) -> PromptSolution:
  """:func:`solve_prompt` of every prompt at one ℓ = log λ."""
  return jax.vmap(solve_prompt, in_axes=(0, None))(prompts, ell)


def log_expect(inst: Instance, log_per_prompt: jax.Array) -> jax.Array:
  """log E_w[e^f] for f given as [X] logs (padded, weight-0 prompts ignored)."""
  w = inst.prompt_weights
  return jax.nn.logsumexp(jnp.where(w > 0, safe_log(w) + log_per_prompt, NEG_INF))


def log_deficit(inst: Instance, prompts: PromptGeometry, sols: PromptSolution) -> jax.Array:
  """log Δ(π_λ) = log E_w Σ_y π_λ (max r − r)."""
  return log_expect(inst, jax.vmap(prompt_log_deficit)(prompts, sols))


def support_sft_loss(inst: Instance, prompts: PromptGeometry, sols: PromptSolution) -> jax.Array:
  """L(π_λ) = E_w Σ_S d log(1/π_λ) (S = supp d ∩ allowed)."""
  per_prompt = -jnp.sum(jnp.where(prompts.on_s, prompts.data * sols.log_pi, 0.0), axis=-1)
  return obj.expect(inst, per_prompt)


def log_lambda_bracket(inst: Instance, prompts: PromptGeometry, log_target, log_deficit_0):
  """[ℓ_lo, ℓ_hi] with Δ(π_λ) ≥ Δ* at ℓ_lo and ≤ Δ* at ℓ_hi (module docstring; Δ* < Δ(π_0))."""
  real = inst.prompt_weights > 0
  log_w_sum = safe_log(jnp.sum(inst.prompt_weights))
  log_m_max = jnp.max(jnp.where(real, prompts.log_mass, NEG_INF))
  log_m_min = jnp.min(jnp.where(real, prompts.log_mass, jnp.inf))
  spread = jnp.max(jnp.where(real, prompts.spread, 0.0))
  log_diff = log_deficit_0 + jnp.log(-jnp.expm1(log_target - log_deficit_0))  # Δ(π_0) − Δ*
  ell_lo = log_diff + log_m_min - log_w_sum - 2.0 * safe_log(spread)
  activate = jnp.max(jnp.where(real & (prompts.log_gap_s > NEG_INF),
                               prompts.log_mass - prompts.log_gap_s, NEG_INF))
  ell_hi = jnp.log(2.0) + jnp.maximum(log_w_sum + log_m_max - log_target, activate)
  return ell_lo, ell_hi


def solve_at_data(inst: Instance, prompts: PromptGeometry, log_target):
  """The λ = 0 end: (π_0, log Δ(π_0), Δ* ≥ Δ(π_0)?, and (log Δ*, log Δ(π_0)) made safe for
  :func:`search_log_lambda`, which needs 0 < Δ* < Δ(π_0))."""
  sols0 = jax.vmap(solve_prompt_at_zero)(prompts)
  log_d0 = log_deficit(inst, prompts, sols0)
  at_data = log_target >= log_d0
  safe = at_data | (log_target == NEG_INF)
  return (sols0, log_d0, at_data, jnp.where(safe, log_d0 - 1.0, log_target),
          jnp.where(safe, jnp.zeros_like(log_d0), log_d0))


def search_log_lambda(inst: Instance, prompts: PromptGeometry, log_target, log_deficit_0):
  """Bisection on asinh(ℓ) for Δ(π_λ) = Δ* (any magnitude of ℓ, to its rounding).

  Args:
    inst: instance.
    prompts: every prompt's geometry.
    log_target: [] log Δ*, with 0 < Δ* < Δ(π_0).
    log_deficit_0: [] log Δ(π_0).

  Returns:
    (ℓ, π_λ, log Δ(π_λ)) at the last ℓ tried (within rounding of the root).
  """
  ell_lo, ell_hi = log_lambda_bracket(inst, prompts, log_target, log_deficit_0)

  def bisect(_, carry):
    lo, hi, _, _, _ = carry
    mid = 0.5 * (lo + hi)
    ell = jnp.sinh(mid)
    sols = solve_prompts(prompts, ell)
    log_def = log_deficit(inst, prompts, sols)
    reached = log_def <= log_target
    return jnp.where(reached, lo, mid), jnp.where(reached, mid, hi), ell, sols, log_def

  start = (jnp.arcsinh(ell_lo), jnp.arcsinh(ell_hi), ell_hi,
           jax.vmap(solve_prompt_at_zero)(prompts), log_deficit_0)  # placeholders (shapes)
  _, _, ell, sols, log_def = jax.lax.fori_loop(0, REGRET_STEPS, bisect, start)
  return ell, sols, log_def
