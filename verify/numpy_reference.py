"""An independent NumPy/SciPy implementation of every `check` quantity, one instance at a time.

Written directly from THEORY.md without sharing code with theory/: used by the tests as the
reference the JAX engine must agree with, and by bench/ as the straightforward baseline.
Inputs are plain numpy arrays of one unpadded instance.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

__all__ = ["reference_quantities", "reference_c1", "reference_beta_critical", "reference_gradients",
           "reference_pl", "reference_rl_flow", "reference_optimal_duration"]


def _xlogy_rows(p, q):
  """sum_y p log q with 0 log anything = 0."""
  return np.sum(special.xlogy(p, np.where(p > 0, q, 1.0)), axis=-1)


def _kl(p, q):
  with np.errstate(divide="ignore"):
    return np.sum(special.rel_entr(p, q), axis=-1)


def _tilt(ref, r, beta):
  with np.errstate(divide="ignore"):
    logits = np.log(ref) + r / beta
  log_z = special.logsumexp(logits, axis=-1)
  return np.exp(logits - log_z[:, None]), log_z


def reference_c1(w, d, ref, r, beta) -> float:
  """C₁(β; ρ) = E_w[log Z_β − E_d r / β]."""
  _, log_z = _tilt(ref, r, beta)
  return float(w @ (log_z - np.sum(d * r, axis=-1) / beta))


def _scaled_c1(w, d, ref, r, beta) -> float:
  """β C₁(β; ρ) = E_w[β log E_ρ e^{r/β} − E_d r], centred at E_ρ r so that large β keeps its
  precision (log1p/expm1 on prompts whose centred exponents are all small)."""
  mean = np.sum(ref * r, -1)
  s = (r - mean[:, None]) / beta
  pos = ref > 0
  small = np.max(np.abs(np.where(pos, s, 0.0)), axis=-1) < 1.0
  via_log1p = np.log1p(np.sum(ref * np.expm1(np.clip(s, -1.0, 1.0)), axis=-1))
  via_lse = special.logsumexp(np.where(pos, s, -np.inf), b=ref, axis=-1)
  return float(w @ (mean + beta * np.where(small, via_log1p, via_lse) - np.sum(d * r, -1)))


def reference_beta_critical(w, d, ref, r) -> float | None:
  """β_c with C₁(β_c; ρ) = 0 by Brent's method on log β in [-25, 25], None when none."""
  g = lambda lb: _scaled_c1(w, d, ref, r, np.exp(lb))
  lo, hi = -25.0, 25.0
  g_lo, g_hi = g(lo), g(hi)
  if not (g_lo > 0 and g_hi < 0):
    return None
  return float(np.exp(optimize.brentq(g, lo, hi, xtol=1e-14, rtol=1e-14)))


def reference_quantities(w, d, ref, r, beta) -> dict:
  """Every quantity of `nondecoupling check` for one instance (numpy float64)."""
  w, d, ref, r = (np.asarray(a, np.float64) for a in (w, d, ref, r))
  pi, log_z = _tilt(ref, r, beta)
  supp = d > 0
  top = np.where(supp, r, -np.inf).max(-1)
  bottom = np.where(supp, r, np.inf).min(-1)
  mean_d = np.sum(d * r, axis=-1)
  out = {
      "sft_loss_data": float(-w @ _xlogy_rows(d, d)),
      "sft_loss_reference": float(-w @ _xlogy_rows(d, ref)),
      "sft_loss_rl": float(-w @ _xlogy_rows(d, pi)),
      "c1": reference_c1(w, d, ref, r, beta),
      "c1_sft_then_rl": reference_c1(w, d, d, r, beta),
      "rl_value": float(beta * (w @ log_z)),
      "reward_reference": float(w @ np.sum(ref * r, -1)),
      "reward_rl": float(w @ np.sum(pi * r, -1)),
      "reward_data": float(w @ mean_d),
      "regularized_reward_data": float(w @ mean_d - beta * (w @ _kl(d, ref))),
      "kl_rl_reference": float(w @ _kl(pi, ref)),
      "kl_data_rl": float(w @ _kl(d, pi)),
      "hoeffding_bound": float(w @ (top - bottom) ** 2 / (8 * beta ** 2)),
      "sup_bound": float(w @ (top - mean_d) / beta),
      "joint_tv": float(w @ (0.5 * np.abs(d - pi).sum(-1))),
      "beta_critical": reference_beta_critical(w, d, ref, r),
  }
  # D2 slope: sum_x w² sum_y (ρ − d) ρ (r − E_ρ r).
  centred = r - np.sum(ref * r, -1, keepdims=True)
  out["initial_slope"] = float(np.sum(w ** 2 * np.sum((ref - d) * ref * centred, -1)))
  # D2 curvature at ρ = d: g = w F_d (r − 0) (h = r at π = ρ), quadratic form with w F_d.
  g = w[:, None] * (d * r - d * np.sum(d * r, -1, keepdims=True))
  fg = d * g - d * np.sum(d * g, -1, keepdims=True)
  out["initial_curvature"] = float(np.sum(w * np.sum(g * fg, -1)))
  return out


# --- dynamics (THEORY.md B5, D5-D7), independent of theory/ ----------------------------------


def _softmax_rows(theta, support):
  z = np.where(support, theta, -np.inf)
  z = z - np.max(z, axis=-1, keepdims=True)
  e = np.where(support, np.exp(z), 0.0)
  return e / e.sum(-1, keepdims=True)


def reference_gradients(w, d, ref, r, beta, theta) -> tuple[np.ndarray, np.ndarray]:
  """(∇_θ L, ∇_θ J_β) of the tabular softmax policy π = softmax(θ) on supp ρ (B5):
  ∇L = w (π − d), ∇J_β = w F_π (r − β log(π/ρ)), F_π = diag(π) − π πᵀ."""
  w, d, ref, r, theta = (np.asarray(a, np.float64) for a in (w, d, ref, r, theta))
  support = ref > 0
  pi = _softmax_rows(theta, support)
  with np.errstate(divide="ignore"):
    h = np.where(support, r - beta * (np.log(np.where(support, pi, 1.0))
                                      - np.log(np.where(support, ref, 1.0))), 0.0)
  g_j = w[:, None] * (pi * h - pi * np.sum(pi * h, -1, keepdims=True))
  g_l = np.where(support, w[:, None] * (pi - d), 0.0)
  return g_l, g_j


def reference_pl(w, d, ref, r, beta, theta) -> dict:
  """D5's sides at π = softmax(θ): ‖∇J_β‖², 2 μ_RL (J_β* − J_β), ‖∇L‖², 2 μ_SFT (L − L(d)),
  with μ_RL = β min_x w_x (min π)², μ_SFT = ½ min_x w_x min π and the gaps as KLs (B1, B2)."""
  w, d, ref, r = (np.asarray(a, np.float64) for a in (w, d, ref, r))
  support = ref > 0
  pi = _softmax_rows(np.asarray(theta, np.float64), support)
  star, _ = _tilt(ref, r, beta)
  g_l, g_j = reference_gradients(w, d, ref, r, beta, theta)
  min_pi = np.min(np.where(support, pi, np.inf), axis=-1)
  real = w > 0
  mu_rl = beta * np.min((w * min_pi ** 2)[real])
  mu_sft = 0.5 * np.min((w * min_pi)[real])
  return {"rl_lhs": float(np.sum(g_j ** 2)), "rl_rhs": float(2 * mu_rl * beta * (w @ _kl(pi, star))),
          "sft_lhs": float(np.sum(g_l ** 2)), "sft_rhs": float(2 * mu_sft * (w @ _kl(d, pi)))}


def reference_rl_flow(w, d, ref, r, beta, theta0, times, rtol=1e-11, atol=1e-13):
  """θ(t) of the RL gradient flow θ̇ = ∇J_β(θ) (scipy solve_ivp, DOP853), at ``times``."""
  from scipy.integrate import solve_ivp
  shape = np.shape(theta0)
  field = lambda _, th: reference_gradients(w, d, ref, r, beta, th.reshape(shape))[1].ravel()
  sol = solve_ivp(field, (0.0, float(np.max(times))), np.ravel(theta0), t_eval=np.asarray(times),
                  method="DOP853", rtol=rtol, atol=atol, dense_output=True)
  return sol


def reference_optimal_duration(w, d, r, beta, lam, horizon) -> float:
  """D7: t* = argmax_t J(π_t) − λ L(π_t) along the RL flow from the SFT optimum (ρ = d), as the
  root (brentq) of dJ/dt − λ dL/dt = ⟨∇J − λ∇L, ∇J_β⟩ after its last sign change from + to − on
  a grid, the flow integrated by scipy."""
  w, d, r = (np.asarray(a, np.float64) for a in (w, d, r))
  support = d > 0
  with np.errstate(divide="ignore"):
    theta0 = np.where(support, np.log(np.where(support, d, 1.0)), 0.0)
  sol = reference_rl_flow(w, d, d, r, beta, theta0, [horizon])

  def rate(t):
    th = sol.sol(t).reshape(d.shape)
    g_l, g_j = reference_gradients(w, d, d, r, beta, th)
    _, g_reward = reference_gradients(w, d, d, r, 0.0, th)
    return float(np.sum((g_reward - lam * g_l) * g_j))

  grid = np.linspace(0.0, horizon, 401)
  values = np.array([rate(t) for t in grid])
  down = np.flatnonzero((values[:-1] > 0) & (values[1:] <= 0))
  if not down.size:
    return float(horizon)
  k = down[0]
  return float(optimize.brentq(rate, grid[k], grid[k + 1], xtol=1e-13, rtol=1e-13))
