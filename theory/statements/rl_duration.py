r"""The optimal RL duration (this project's D7; not the paper's).

Along the RL flow from the SFT optimum (ρ = d), t*(λ) = argmax_t J(π_t) − λ L(π_t), computed from the
integrated flow and a root of dJ/dt = λ dL/dt. Beside it the PL guarantee of D5: the RL gap is below
ε·gap(0) by t_ε = ln(1/ε) / (2 μ_min), μ_min the smallest μ_RL along the trajectory.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ..flows import integrate
from ..instance import Instance, rl_stage_after_sft
from ..objectives import initial_logits, policy_log_probs, reward, rl_grad, sft_grad, sft_loss
from .pl import mu_rl, rl_gap

__all__ = ["optimal_rl_duration"]


def _duration_rate(inst, theta, lam):
  """φ(θ) = dJ/dt − λ dL/dt along θ̇ = ∇J_β: ⟨∇J − λ∇L, ∇J_β⟩ (closed forms)."""
  f = rl_grad(inst, theta)
  grad_j = rl_grad(dataclasses.replace(inst, beta=jnp.zeros_like(inst.beta)), theta)
  return jnp.sum((grad_j - lam * sft_grad(inst, theta)) * f)


def _duration_objective(inst, theta, lam):
  log_pi = policy_log_probs(inst, theta)
  return reward(inst, log_pi) - lam * sft_loss(inst, log_pi)


def _rl_field_args(theta, inst):
  return rl_grad(inst, theta)


@functools.partial(jax.jit, static_argnames=("n_grid", "n_bisect", "rtol", "atol", "max_steps"))
def optimal_rl_duration(inst: Instance, lam, horizon, eps=1e-2, *, n_grid: int = 129,
                        n_bisect: int = 50, rtol: float = 1e-10, atol: float = 1e-12,
                        max_steps: int = 1 << 16) -> dict:
  r"""This project's D7: t*(λ) = argmax_t J(π_t) − λ L(π_t) along the RL flow from the SFT optimum.

  The flow is θ̇ = ∇J_β(θ; d) from θ = log d (the paper's SFT-then-RL with ρ = d). On a grid of
  ``n_grid`` times on [0, horizon] the grid argmax is bracketed by a sign change of
  φ(t) = dJ/dt − λ dL/dt, then the root is refined by bisection, integrating the flow from the
  bracket's left end each time. If φ > 0 up to the horizon, t* is the horizon (``interior`` False).
  Beside it, the PL time of D5: with m_k = min_{j<=k} μ_RL(π_{t_j}), t_ε = ln(1/ε) / (2 m_k) at
  the first grid time t_k >= ln(1/ε)/(2 m_k) (``t_eps_in_horizon`` False if none); gap(t_ε) is
  integrated and compared with ε gap(0).

  Args:
    inst: instance (its reference is replaced by its data).
    lam: λ >= 0, the price of SFT loss in reward units.
    horizon: end of the time grid.
    eps: target fraction of the initial RL gap.

  Returns:
    dict: t_star, objective_star (J − λL at t*), rate_star (φ(t*), ~0 at an interior root),
    interior, grid_times, grid_objective, t_eps, t_eps_in_horizon, gap0, gap_at_t_eps,
    theta_at_t_eps (the logits there),
    pl_margin = (ε gap0 − gap(t_ε)) / (ε gap0) (>= 0 holds), argmax_margin = objective_star −
    max(grid objective) (>= 0 up to rounding), mu_min, ok.
  """
  inst = rl_stage_after_sft(inst)
  theta0 = initial_logits(inst)
  dtype = theta0.dtype
  lam = jnp.asarray(lam, dtype)
  grid = jnp.linspace(0.0, 1.0, n_grid, dtype=dtype) * horizon
  thetas, ok = integrate(_rl_field_args, theta0, grid[1:], inst, rtol=rtol, atol=atol,
                               max_steps=max_steps)
  thetas = jnp.concatenate([theta0[None], thetas])
  rates = jax.vmap(lambda th: _duration_rate(inst, th, lam))(thetas)
  values = jax.vmap(lambda th: _duration_objective(inst, th, lam))(thetas)
  k = jnp.argmax(values)
  # Bracket [left, left + 1] where φ changes sign from + to − around the grid argmax.
  left = jnp.where((rates[k] > 0) | (k == 0), k, k - 1)
  left = jnp.minimum(left, n_grid - 2)
  interior = (rates[left] > 0) & (rates[left + 1] <= 0)
  t_left, theta_left = grid[left], thetas[left]

  tiny = 1e-12 * horizon

  def bisect(_, state):
    # Invariant: φ(a) > 0 >= φ(b); θ_a is the flow at a (integrated from the previous a).
    a, b, theta_a = state
    span = jnp.maximum(0.5 * (b - a), tiny)
    th, _ = integrate(_rl_field_args, theta_a, jnp.stack([0.5 * span, span]), inst,
                            rtol=rtol, atol=atol, max_steps=max_steps)
    pos = _duration_rate(inst, th[-1], lam) > 0
    mid = a + span
    return (jnp.where(pos, mid, a), jnp.where(pos, b, mid), jnp.where(pos, th[-1], theta_a))

  t_root, _, theta_root = jax.lax.fori_loop(0, n_bisect, bisect,
                                            (t_left, grid[left + 1], theta_left))
  t_star = jnp.where(interior, t_root, grid[k])
  theta_star = jnp.where(interior, theta_root, thetas[k])
  objective_star = _duration_objective(inst, theta_star, lam)
  rate_star = _duration_rate(inst, theta_star, lam)

  log_pis = jax.vmap(lambda th: policy_log_probs(inst, th))(thetas)
  mus = jax.vmap(lambda lp: mu_rl(inst, lp))(log_pis)
  running_min = jax.lax.cummin(mus)
  need = jnp.log(1.0 / eps) / (2 * running_min)
  reached = grid >= need
  in_horizon = jnp.any(reached)
  j = jnp.where(in_horizon, jnp.argmax(reached), n_grid - 1)
  mu_min = running_min[j]
  t_eps = jnp.log(1.0 / eps) / (2 * mu_min)
  # integrate from the last grid point at or before t_eps
  i0 = jnp.clip(jnp.searchsorted(grid, t_eps, side="right") - 1, 0, n_grid - 1)
  span = jnp.maximum(t_eps - grid[i0], tiny)
  th_eps, ok_eps = integrate(_rl_field_args, thetas[i0], jnp.stack([0.5 * span, span]),
                                   inst, rtol=rtol, atol=atol, max_steps=max_steps)
  th_eps = jnp.where(span > tiny, th_eps[-1], thetas[i0])
  gap0 = rl_gap(inst, log_pis[0])
  gap_eps = rl_gap(inst, policy_log_probs(inst, th_eps))
  target = eps * gap0
  pl_margin = jnp.where(target > 0, (target - gap_eps) / jnp.where(target > 0, target, 1.0),
                        -jnp.abs(gap_eps))
  return dict(t_star=t_star, objective_star=objective_star, rate_star=rate_star,
              interior=interior, grid_times=grid, grid_objective=values, grid_rate=rates,
              t_eps=t_eps, t_eps_in_horizon=in_horizon, mu_min=mu_min, gap0=gap0,
              gap_at_t_eps=gap_eps, theta_at_t_eps=th_eps, pl_margin=pl_margin,
              argmax_margin=objective_star - jnp.max(values), ok=ok & ok_eps)
