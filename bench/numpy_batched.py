"""The baseline a researcher would write: every `check` quantity in NumPy, vectorised over a batch.

All instances of the batch at once (arrays [B, X, Y]), no Python loop over instances or prompts;
β_c by the same Newton iteration as the engine (from the right of the root, started from the
quadratic model, one exponential per entry and step, stopped where h is at its rounding level),
run on the whole batch with a mask of the instances not yet converged.
Float64, the plain forms (log-sum-exp with the row maximum, KL as Σ p log(p/q)): what a careful
user writes, not the engine's cancellation-free forms, so it agrees with them to rounding on
well-conditioned instances such as the benchmark's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batched_quantities"]

_NEWTON_RTOL = 1e-14
_NEWTON_MAX_STEPS = 200
_T_MIN = np.exp(-25.0)


def _wsum(w, term, power=1):
  """Σ_x w_x^power term_x per instance ([B, X] -> [B])."""
  return np.einsum("bx,bx->b", w ** power, term)


def _lse(logits):
  """log Σ_y exp(logits) over the last axis, with the row maximum taken out."""
  top = logits.max(-1, keepdims=True)
  return (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]


def _critical_beta(w, d, rho, r, log_rho, mean_rho, mean_d):
  """β_c per instance (NaN when none) by Newton's method on h(t) = E_w[log E_ρ e^{t r} − t E_d r]."""
  centred = r - mean_rho[..., None]
  gap = mean_rho - mean_d                                     # [B, X]
  top = np.where(rho > 0, r, -np.inf).max(-1, keepdims=True)
  mass_top = np.where((rho > 0) & (r == top), rho, 0.0).sum(-1)
  headroom = _wsum(w, np.where(d > 0, d * (top - r), 0.0).sum(-1))
  gain = -_wsum(w, gap)
  var = _wsum(w, (rho * centred ** 2).sum(-1))
  exists = (gain > 0) & (headroom > 0)
  t_up = np.where(exists, _wsum(w, -np.log(mass_top)) / np.where(exists, headroom, 1.0), 1.0)
  t_up = np.maximum(t_up, _T_MIN)

  def h_and_slope(t, sel):
    tb = t[:, None, None]
    logits = log_rho[sel] + tb * centred[sel]
    top_l = logits.max(-1, keepdims=True)
    e = np.exp(logits - top_l)                                # one exponential per entry
    total = e.sum(-1, keepdims=True)
    lse = (top_l + np.log(total))[..., 0]
    h = _wsum(w[sel], t[:, None] * gap[sel] + lse)
    dh = _wsum(w[sel], (e * r[sel]).sum(-1) / total[..., 0] - mean_d[sel])
    # h's rounding scale: stop where h is at its rounding level, as the engine does
    scale = _wsum(w[sel], np.abs(top_l[..., 0]) + np.abs(lse) + t[:, None] * np.abs(gap[sel]))
    return h, dh, scale

  every = np.ones(len(w), bool)
  t_quad = np.clip(2.0 * gain / np.where(var > 0, var, 1.0), _T_MIN, t_up)
  h_quad, dh_quad, _ = h_and_slope(t_quad, every)
  tangent = t_quad - h_quad / np.where(dh_quad > 0, dh_quad, 1.0)
  t = np.where(h_quad >= 0, t_quad, np.where(dh_quad > 0, np.minimum(tangent, t_up), t_up))
  active = exists.copy()
  for _ in range(_NEWTON_MAX_STEPS):
    if not active.any():
      break
    idx = np.flatnonzero(active)
    h, dh, scale = h_and_slope(t[idx], idx)
    step = np.abs(h) > 64 * np.finfo(float).eps * scale
    nxt = np.where((dh > 0) & step, t[idx] - h / np.where(dh > 0, dh, 1.0), t[idx])
    nxt = np.clip(nxt, 1e-6 * t[idx], 1e6 * t[idx])
    done = np.abs(nxt - t[idx]) <= _NEWTON_RTOL * t[idx]
    t[idx] = nxt
    active[idx[done]] = False
  beta_c = 1.0 / t
  inside = (beta_c > np.exp(-25.0)) & (beta_c < np.exp(25.0))
  return np.where(exists & inside, beta_c, np.nan)


def batched_quantities(w, d, rho, r, beta) -> dict[str, np.ndarray]:
  """Every `check` quantity for a batch of dense instances.

  Args:
    w: [B, X] prompt weights; d, rho, r: [B, X, Y] data, reference, reward; beta: [B].

  Returns:
    dict name -> [B], the names of ``theory.quantities.QUANTITY_DOCS``.
  """
  b = beta[:, None]
  with np.errstate(divide="ignore"):
    log_rho, log_d = np.log(rho), np.log(d)
  sup = d > 0
  d_log_d = np.where(sup, d * log_d, 0.0)
  mean_rho, mean_d = (rho * r).sum(-1), (d * r).sum(-1)       # [B, X]
  logits = log_rho + r / beta[:, None, None]
  log_z = _lse(logits)
  log_pi = logits - log_z[..., None]
  pi = np.exp(log_pi)
  logits_d = np.where(sup, log_d + (r - mean_d[..., None]) / beta[:, None, None], -np.inf)
  kl_d_rho = (d_log_d - np.where(sup, d * log_rho, 0.0)).sum(-1)
  top = np.where(sup, r, -np.inf).max(-1)
  bottom = np.where(sup, r, np.inf).min(-1)
  dev_d = r - mean_d[..., None]
  a = d * dev_d
  dev_a = a - (d * a).sum(-1, keepdims=True)
  out = {
      "sft_loss_data": -_wsum(w, d_log_d.sum(-1)),
      "sft_loss_reference": -_wsum(w, np.where(sup, d * log_rho, 0.0).sum(-1)),
      "sft_loss_rl": -_wsum(w, np.where(sup, d * log_pi, 0.0).sum(-1)),
      "c1": _wsum(w, log_z - mean_d / b),
      "c1_sft_then_rl": _wsum(w, _lse(logits_d)),
      "rl_value": beta * _wsum(w, log_z),
      "reward_reference": _wsum(w, mean_rho),
      "reward_rl": _wsum(w, (pi * r).sum(-1)),
      "reward_data": _wsum(w, mean_d),
      "regularized_reward_data": _wsum(w, mean_d - b * kl_d_rho),
      "kl_rl_reference": _wsum(w, (pi * (log_pi - log_rho)).sum(-1)),
      "kl_data_rl": _wsum(w, (d_log_d - np.where(sup, d * log_pi, 0.0)).sum(-1)),
      "hoeffding_bound": _wsum(w, ((top - bottom) / b) ** 2 / 8.0),
      "sup_bound": _wsum(w, (d * (top[..., None] - r)).sum(-1) / b),
      "joint_tv": _wsum(w, 0.5 * np.abs(d - pi).sum(-1)),
      "beta_critical": _critical_beta(w, d, rho, r, log_rho, mean_rho, mean_d),
      "initial_slope": _wsum(w, ((rho - d) * rho * (r - mean_rho[..., None])).sum(-1), 2),
      "initial_curvature": _wsum(w, (d * dev_a ** 2).sum(-1), 3),
  }
  return out
