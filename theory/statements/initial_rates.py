r"""The non-decoupling threshold for infinitesimal RL (this project's D2; not the paper's).

Along the RL logit gradient flow θ̇ = ∇J_β started at θ = log ρ:

- dL/dt at t = 0 = Σ_x w_x² Σ_y (ρ − d)(y|x) ρ(y|x) (r(x,y) − E_{ρ_x} r) (closed form);
- at ρ = d (the SFT optimum) the slope is 0 and d²L/dt² at t = 0 = gᵀ H_L g with g = ∇J_β(log d)
  and H_L = blockdiag(w_x F_x), the Hessian of L in logits.

Both are checked against automatic differentiation (identities) and against finite differences of
the integrated flow (:func:`d2_check`). The closed forms centre r in two passes (near ties keep
their precision) and write the curvature as Σ_x w³ Σ_y d (a − E_d a)², a = d ⊙ (r − E_d r), a sum
of non-negative terms.

Rounding (see :mod:`..verdict`): the autodiff path computes π = softmax(log ρ) (relative error
u(1 + |log ρ_y| + max|log ρ|) per entry) and h = r − β log(π/ρ), whose terms have magnitude
H_y = |r_y| + Σρ|r| + β(1 + |log ρ_y| + max|log ρ|): the slope's scale is
Σ w² Σ_y [A_y b_y + a_y B_y] with a = |ρ − d|, A = ρ(1 + |log ρ| + max|log ρ|) (∇L's value and
error scale) and b = ρ(|r − E_ρ r| + Σρ|r − E_ρ r|), B = ρ(H + Σρ H)(1 + |log ρ| + max|log ρ|)
(∇J_β's). The curvature's is Σ w³ [Σ_y d (|ĝ| + Σd|ĝ|)(G + Σd G)·2 + β (Σ A)(Σ d|ĝ|)²] with
ĝ = d(r − E_d r) and G the error scale of ĝ (as B, at ρ = d): the product of the gradients'
magnitudes with their error scales, and the second-order term ∇L·(D∇J_β)·∇J_β whose ∇L is
rounding at ρ = d but whose D∇J_β carries β. Both add the products of two errors,
γ Σ A B and γ (Σ d (G + Σ d G))² (1 + β Σ d cond), which are all that is left when r ≡ 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .._numerics import centre, expm1_minus_x
from ..flows import integrate, natural_time
from ..instance import Instance, rl_stage_after_sft
from ..objectives import (
  expect,
  initial_logits,
  policy_log_probs,
  regularized_reward,
  rl_grad,
  rl_support,
  safe_log,
  sft_grad,
  sft_loss,
)
from ..rounding import abs_log, entries
from ..verdict import Verdict, gamma_for, identity, rounding_slack

__all__ = [
    "initial_slope", "initial_curvature", "initial_curvature_general", "rl_slope_autodiff",
    "rl_curvature_autodiff", "rl_slope_at_start", "rl_curvature_at_sft_optimum",
    "slope_scale", "curvature_scale",
    "d2_stencil_step", "d2_flow_derivatives", "d2_check",
]

ROUNDING = 1e-15  # absolute rounding level of loss changes (D2 finite differences)



def initial_slope(inst: Instance) -> jax.Array:
  r"""D2 (ours): dL/dt at t = 0 along θ̇ = ∇J_β from θ = log ρ.

  .. math:: \sum_x w_x^2 \sum_y (\rho - d)(y|x)\, \rho(y|x)\, (r(x,y) - E_{\rho_x} r)

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> round(float(initial_slope(inst)), 6)  # (ρ − d)·F_ρ r = (¼, −¼)·(−3/16, 3/16) = −3/32
    -0.09375
  """
  rho, d, w = inst.reference, inst.data, inst.prompt_weights
  _, centred = centre(rho, jnp.where(inst.response_mask, inst.reward, 0.0))
  per = jnp.sum(jnp.where(rho > 0, (rho - d) * rho * centred, 0.0), axis=-1)
  return jnp.sum(jnp.where(w > 0, w ** 2 * per, 0.0))


def _fisher_reward(inst: Instance) -> jax.Array:
  """[X, Y] ĝ = F_d r = d ⊙ (r − E_d r) (∇J_β(log d) / w at ρ = d)."""
  _, dev = centre(inst.data, jnp.where(inst.response_mask, inst.reward, 0.0))
  return inst.data * dev


def initial_curvature(inst: Instance) -> jax.Array:
  r"""D2 (ours): d²L/dt² at t = 0 along the RL flow from the SFT optimum (ρ = d).

  .. math:: g^\top H_L g = \sum_x w_x^3 \sum_y d (a - E_d a)^2,\quad a = d \odot (r - E_d r),
            \ g = \nabla J_\beta(\log d) = w\,a,\ H_L = \mathrm{blockdiag}(w_x F_x)

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(initial_curvature(inst)), 6)  # gᵀ F_d g with g = F_d r = (−¼, ¼): 1/16
    0.0625
  """
  a = _fisher_reward(inst)
  _, dev = centre(inst.data, a)
  per = jnp.sum(inst.data * dev ** 2, axis=-1)
  w = inst.prompt_weights
  return jnp.sum(jnp.where(w > 0, w ** 3 * per, 0.0))


def _entry_conditioning(p: jax.Array) -> jax.Array:
  """[X, Y] 1 + |log p_y| + max|log p| (softmax(log p)'s relative error per u), 0 off supp p."""
  lp = abs_log(safe_log(p))
  return jnp.where(p > 0, 1.0 + lp + jnp.max(lp, axis=-1, keepdims=True), 0.0)


def _h_scale(inst: Instance, p: jax.Array) -> jax.Array:
  """[X, Y] magnitudes of the terms of h = r − β log(π/p) at π = p (p = ρ or d)."""
  r = jnp.abs(jnp.where(inst.response_mask, inst.reward, 0.0))
  return jnp.where(p > 0, r + jnp.sum(p * r, axis=-1, keepdims=True)
                   + inst.beta * _entry_conditioning(p), 0.0)


def _grad_j_scale(inst: Instance, p: jax.Array) -> jax.Array:
  """[X, Y] error scale of ∇J_β / w at π = p: p (H + Σ p H)(1 + |log p| + max|log p|)."""
  h = _h_scale(inst, p)
  return p * (h + jnp.sum(p * h, axis=-1, keepdims=True)) * _entry_conditioning(p)


def slope_scale(inst: Instance) -> jax.Array:
  """[] the scale of D2's slope identity (module docstring).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> float(slope_scale(inst)) > 0  # a positive error scale
    True
  """
  rho, d = inst.reference, inst.data
  _, c = centre(rho, jnp.where(inst.response_mask, inst.reward, 0.0))
  abs_c = jnp.abs(c)
  b = rho * (abs_c + jnp.sum(rho * abs_c, axis=-1, keepdims=True))
  big_a = rho * _entry_conditioning(rho)
  big_b = _grad_j_scale(inst, rho)
  g = gamma_for(entries(inst), rho.dtype)
  per = jnp.sum(big_a * b + jnp.abs(rho - d) * big_b + g * big_a * big_b, axis=-1)
  w = inst.prompt_weights
  return jnp.sum(jnp.where(w > 0, w ** 2 * per, 0.0))


def curvature_scale(inst: Instance) -> jax.Array:
  """[] the scale of D2's curvature identity at ρ = d (module docstring).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> import jax
    >>> float(jax.jit(curvature_scale)(inst)) > 0  # a positive error scale
    True
  """
  d = inst.data
  sr = rl_stage_after_sft(inst)
  g = jnp.abs(_fisher_reward(inst))
  big_g = _grad_j_scale(sr, d)
  mag = g + jnp.sum(d * g, axis=-1, keepdims=True)
  err = big_g + jnp.sum(d * big_g, axis=-1, keepdims=True)
  first = 2.0 * jnp.sum(d * mag * err, axis=-1)
  cond = jnp.sum(d * _entry_conditioning(d), axis=-1)
  second = inst.beta * cond * jnp.sum(d * g, axis=-1) ** 2
  # Products of two rounding errors (all that is left when r ≡ 0): γ (Σ d err)² (1 + β cond).
  errors = gamma_for(entries(inst), d.dtype) * jnp.sum(d * err, axis=-1) ** 2 * (
      1.0 + inst.beta * cond)
  w = inst.prompt_weights
  return jnp.sum(jnp.where(w > 0, w ** 3 * (first + second + errors), 0.0))


def _auto_field(inst: Instance):
  return jax.grad(lambda t: regularized_reward(inst, policy_log_probs(inst, t)))


def _auto_loss(inst: Instance):
  return lambda t: sft_loss(inst, policy_log_probs(inst, t))


def rl_slope_autodiff(inst: Instance) -> jax.Array:
  """dL/dt at t = 0 by automatic differentiation (chain rule ∇L · ∇J_β, both by jax.grad).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> # autodiff = closed form
    >>> round(float(rl_slope_autodiff(inst)), 6) == round(float(initial_slope(inst)), 6)
    True
  """
  theta0 = initial_logits(inst)
  return jax.jvp(_auto_loss(inst), (theta0,), (_auto_field(inst)(theta0),))[1]


def rl_curvature_autodiff(inst: Instance) -> jax.Array:
  """d²L/dt² at t = 0 from ρ = d by automatic differentiation of t ↦ L(θ(t)) (exact 2nd order).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # autodiff = closed form
    >>> round(float(rl_curvature_autodiff(inst)), 6) == round(float(initial_curvature(inst)), 6)
    True
  """
  sr = rl_stage_after_sft(inst)
  field, loss = _auto_field(sr), _auto_loss(sr)
  first = lambda t: jax.jvp(loss, (t,), (field(t),))[1]  # dL/dt as a function of θ
  theta0 = initial_logits(sr)
  return jax.jvp(first, (theta0,), (field(theta0),))[1]


def rl_slope_at_start(inst: Instance) -> Verdict:
  """D2 (ours): the closed-form initial slope equals dL/dt by autodiff.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = rl_slope_at_start(inst)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  return identity(initial_slope(inst), rl_slope_autodiff(inst),
                  rounding_slack(slope_scale(inst), entries(inst)))


def rl_curvature_at_sft_optimum(inst: Instance) -> Verdict:
  """D2 (ours): at ρ = d the slope is 0 and d²L/dt² = gᵀ H_L g (autodiff) — and it is ≥ 0.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> import jax
    >>> v = jax.jit(rl_curvature_at_sft_optimum)(inst)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  return identity(initial_curvature(inst), rl_curvature_autodiff(inst),
                  rounding_slack(curvature_scale(inst), entries(inst)))



def initial_curvature_general(inst: Instance) -> jax.Array:
  r"""This project's D2, general ρ: d²L/dt² at t = 0 along the RL flow from log ρ.

  .. math:: \ddot L(0) = g^\top H_L g + \nabla L^\top (Dg)\,g,\qquad g = \nabla J_\beta(\log\rho)

  (forward-mode derivative of ⟨∇L, g⟩ along g; both gradients in closed form).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> round(float(initial_curvature_general(inst)), 6)
    0.043945
  """
  theta0 = initial_logits(inst)
  g = rl_grad(inst, theta0)
  rate = lambda th: jnp.sum(sft_grad(inst, th) * rl_grad(inst, th))
  return jax.jvp(rate, (theta0,), (g,))[1]


def _displacement_field(delta, args):
  inst, theta0, sign = args
  return sign * rl_grad(inst, theta0 + delta)


def _loss_change(inst, log_pi0, delta):
  r"""L(θ₀ + δ) − L(θ₀) without cancellation, π₀ = softmax(θ₀) on the RL support.

  .. math:: \sum_x w_x\Big[\log\big(1 + E_{\pi_0}[e^{\delta'} - 1 - \delta']\big)
            + \langle \pi_0 - d, \delta\rangle_x\Big],\quad \delta' = \delta - E_{\pi_0}\delta
  """
  support = rl_support(inst)
  pi0 = jnp.where(support, jnp.exp(log_pi0), 0.0)
  delta = jnp.where(support, delta, 0.0)
  centred = delta - jnp.sum(pi0 * delta, axis=-1, keepdims=True)
  curv = jnp.log1p(jnp.sum(jnp.where(support, pi0 * expm1_minus_x(centred), 0.0), axis=-1))
  lin = jnp.sum((pi0 - inst.data) * delta, axis=-1)
  return expect(inst, curv + lin)


def d2_stencil_step(inst: Instance) -> tuple[jax.Array, jax.Array]:
  r"""The default stencil step h of :func:`d2_flow_derivatives` and the logit move it makes.

  h = 1e-2 · min(1/max|∇J_β(log ρ)|, :func:`natural_time`); the move is h · max|∇J_β(log ρ)|.
  Finite differences of the flow resolve the derivatives only when the move is well above the
  rounding of O(1) logits (near-tie rewards move them by ~1e-13).

  Returns:
    (h [], move []).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> h, move = d2_stencil_step(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> round(float(h), 6), round(float(move), 6)
    (0.005, 0.00125)
  """
  g_max = jnp.max(jnp.abs(rl_grad(inst, initial_logits(inst))))
  h = 1e-2 * jnp.minimum(jnp.where(g_max > 0, 1.0 / jnp.where(g_max > 0, g_max, 1.0), jnp.inf),
                         natural_time(inst))
  return h, h * g_max


@functools.partial(jax.jit, static_argnames=("rtol", "atol"))
def d2_flow_derivatives(inst: Instance, h=None, *, rtol: float = 1e-12, atol=None):
  r"""This project's D2, measured: dL/dt and d²L/dt² at t = 0 from the integrated RL flow.

  Integrates the displacement δ = θ − log ρ forwards and backwards in time to ±h, ±2h and applies
  the fourth-order central stencils to ΔL(t) = L(π_t) − L(ρ), computed without cancellation:
  L̇ ≈ (−ΔL₂ + 8ΔL₁ − 8ΔL₋₁ + ΔL₋₂)/(12h), L̈ ≈ (−ΔL₂ + 16ΔL₁ + 16ΔL₋₁ − ΔL₋₂)/(12h²).

  Args:
    inst: instance (the flow starts at log ρ with reference ρ).
    h: time step (default 1e-2 · min(1/max|∇J_β(log ρ)|, :func:`natural_time`): the logits
      move by at most ~1e-2 and the fastest mode of the flow by ~1e-2 e-folds per step).
    rtol: the integrator's relative tolerance.
    atol: its absolute tolerance on the displacement (default ``rtol`` × h·max|∇J_β(log ρ)|, the
      size of the displacement at t = h: a fixed atol would swamp the tiny displacements of
      near-tie rewards, whose gradients are ~1e-13).

  Returns:
    (slope [], curvature [], h [], ok []).
  """
  theta0 = initial_logits(inst)
  g = rl_grad(inst, theta0)
  if h is None:
    h, _ = d2_stencil_step(inst)
  h = jnp.asarray(h, theta0.dtype)
  if atol is None:
    tiny = jnp.finfo(theta0.dtype).tiny
    atol = rtol * jnp.maximum(h * jnp.max(jnp.abs(g)), tiny / rtol)
  ts = jnp.stack([h, 2 * h])
  zero = jnp.zeros_like(theta0)
  signs = jnp.array([1.0, -1.0], theta0.dtype)
  both, ok = jax.vmap(lambda sg: integrate(_displacement_field, zero, ts,
                                                 (inst, theta0, sg), rtol=rtol, atol=atol))(signs)
  fwd, bwd = both[0], both[1]
  log_pi0 = policy_log_probs(inst, theta0)
  change = lambda delta: _loss_change(inst, log_pi0, delta)
  l1, l2 = change(fwd[0]), change(fwd[1])
  lm1, lm2 = change(bwd[0]), change(bwd[1])
  slope = (-l2 + 8 * l1 - 8 * lm1 + lm2) / (12 * h)
  curv = (-l2 + 16 * l1 + 16 * lm1 - lm2) / (12 * h ** 2)
  return slope, curv, h, jnp.all(ok)


def d2_check(inst: Instance, rel_tol: float = 1e-4) -> dict:
  r"""This project's D2 against finite differences of the flow (general ρ, and ρ = d).

  margin = rel_tol − the largest scaled error of: slope at ρ, curvature at ρ, slope (= 0) and
  curvature at ρ = d. Errors are scaled by the size of the Taylor terms the stencils see:
  slope errors by |L̇| + |L̈| h, curvature errors by |L̇|/h + |L̈| (h the stencil step), with
  floors ROUNDING/h and ROUNDING/h² (rounding of the loss changes, ROUNDING = 1e-15).

  Returns:
    dict of closed forms, measured values, ``displacement`` (the smaller of the two stencils'
    largest logit move h·max|∇J_β(log ρ)|) and ``margin`` (>= 0: agreement within rel_tol).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> out = d2_check(inst)
    >>> # closed form, finite differences
    >>> round(float(out['slope']), 6), round(float(out['slope_fd']), 6)
    (-0.09375, -0.09375)
  """
  slope = initial_slope(inst)
  curv = initial_curvature_general(inst)
  inst_d = rl_stage_after_sft(inst)
  curv_d = initial_curvature(inst)
  pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), inst, inst_d)
  fd_s, fd_c, hs, oks = jax.vmap(d2_flow_derivatives)(pair)
  fd_slope, fd_curv, h, ok1 = fd_s[0], fd_c[0], hs[0], oks[0]
  fd_slope_d, fd_curv_d, h_d, ok2 = fd_s[1], fd_c[1], hs[1], oks[1]

  def scaled(err, scale, floor):
    return err / jnp.maximum(scale, floor)

  err = jnp.stack([
      scaled(jnp.abs(fd_slope - slope), jnp.abs(slope) + jnp.abs(curv) * h, ROUNDING / h),
      scaled(jnp.abs(fd_curv - curv), jnp.abs(slope) / h + jnp.abs(curv), ROUNDING / h ** 2),
      scaled(jnp.abs(fd_slope_d), jnp.abs(curv_d) * h_d, ROUNDING / h_d),
      scaled(jnp.abs(fd_curv_d - curv_d), jnp.abs(curv_d), ROUNDING / h_d ** 2),
  ])
  margin = jnp.where(ok1 & ok2, rel_tol - jnp.max(err), -jnp.inf)
  # How far the stencil moves the logits: finite differences of the flow resolve the derivatives
  # only when this is well above the rounding of O(1) logits (see RESOLVABLE_DISPLACEMENT).
  step = jnp.minimum(h * jnp.max(jnp.abs(rl_grad(inst, initial_logits(inst)))),
                     h_d * jnp.max(jnp.abs(rl_grad(inst_d, initial_logits(inst_d)))))
  return dict(slope=slope, slope_fd=fd_slope, displacement=step, curvature=curv, curvature_fd=fd_curv,
              curvature_at_d=curv_d, curvature_at_d_fd=fd_curv_d, slope_at_d_fd=fd_slope_d,
              margin=margin)
