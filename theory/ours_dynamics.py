r"""This project's dynamics results D2, D5, D6, D7 (THEORY.md part D; not the paper's).

These statements are this project's own (they stand in for the PL-condition results of the
paper's v2, whose exact statements we do not have). Each statement function returns its two
sides and a ``margin`` (margin >= 0 means the statement holds at that input), never only a
boolean. Everything is unbatched; use ``jax.vmap`` for batches of padded instances.

- D2 (this project's): slope and curvature of L at t = 0 along the RL flow θ̇ = ∇J_β from log ρ,
  in closed form, and measured by finite differences of the integrated flow.
- D5 (this project's): PL inequalities ‖∇J_β‖² ≥ 2 μ_RL (J_β* − J_β), μ_RL = β min_x w_x (min_y π)²;
  ‖∇L‖² ≥ 2 μ_SFT (L − L(d)), μ_SFT = ½ min_x w_x min_y π; the decay bound
  gap(t) ≤ gap(0) exp(−2∫₀ᵗ μ(s) ds) on integrated flows (∫μ integrated with the flow).
- D6 (this project's): per prompt
  |⟨∇_x L, ∇_x J_β⟩| ≤ w_x² β λ_max(F_x)² ‖P(d_x/π_x)‖ ‖P log(π*_x/π_x)‖
  ≤ w_x² β (max π_x)² ‖…‖ ‖…‖ and the bound's tightness.
- D7 (this project's): the optimal RL duration t*(λ) = argmax_t J(π_t) − λ L(π_t) along the RL flow
  from the SFT optimum (ρ = d), t_ε = ln(1/ε) / (2 μ_min), and the check gap(t_ε) ≤ ε gap(0).

References:
  Karimi, Nutini, Schmidt, "Linear convergence of gradient and proximal-gradient methods under the
  Polyak–Łojasiewicz condition" (ECML 2016); Mei et al., "On the global convergence rates of
  softmax policy gradient methods" (ICML 2020).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from theory import flows
from theory import objectives as obj
from theory.instance import Instance
from theory.ours import initial_curvature, initial_slope
from theory.paper import sft_then_rl

__all__ = [
    "d2_initial_curvature",
    "d2_flow_derivatives", "d2_check",
    "mu_rl", "mu_sft", "rl_gap", "pl_rl", "pl_sft", "pl_decay",
    "spectral_misalignment", "natural_time", "optimal_rl_duration",
]


ROUNDING = 1e-15  # absolute rounding level of loss changes (D2 finite differences)


def _relative_margin(lhs_big, rhs_small):
  """(lhs − rhs) / (|lhs| + |rhs|), 0 when both vanish: >= 0 iff lhs >= rhs; in [−1, 1]."""
  den = jnp.abs(lhs_big) + jnp.abs(rhs_small)
  return jnp.where(den > 0, (lhs_big - rhs_small) / jnp.where(den > 0, den, 1.0), 0.0)


def _real(inst):
  return inst.prompt_weights > 0


def natural_time(inst: Instance) -> jax.Array:
  r"""The fastest time scale of the RL flow: 1 / (max_x w_x (β + max_x osc_y r)).

  The Jacobian of ∇J_β in logits is bounded by w_x(β + osc r) per prompt, so an explicit solver
  needs O(T / natural_time) steps to reach time T.
  """
  support = obj.rl_support(inst)
  r_hi = jnp.max(jnp.where(support, inst.reward, -jnp.inf), axis=-1)
  r_lo = jnp.min(jnp.where(support, inst.reward, jnp.inf), axis=-1)
  osc = jnp.max(jnp.where(_real(inst), r_hi - r_lo, 0.0))
  return 1.0 / (jnp.max(inst.prompt_weights) * (inst.beta + osc))


# ----------------------------------------------------------------------------- D2

def _rl_field(inst, theta):
  return obj.rl_grad(inst, theta)


def d2_initial_curvature(inst: Instance) -> jax.Array:
  r"""This project's D2, general ρ: d²L/dt² at t = 0 along the RL flow from log ρ.

  .. math:: \ddot L(0) = g^\top H_L g + \nabla L^\top (Dg)\,g,\qquad g = \nabla J_\beta(\log\rho)

  (forward-mode derivative of ⟨∇L, g⟩ along g; both gradients in closed form).
  """
  theta0 = flows.initial_logits(inst)
  g = _rl_field(inst, theta0)
  rate = lambda th: jnp.sum(obj.sft_grad(inst, th) * _rl_field(inst, th))
  return jax.jvp(rate, (theta0,), (g,))[1]


def _displacement_field(delta, args):
  inst, theta0, sign = args
  return sign * obj.rl_grad(inst, theta0 + delta)


def _expm1_minus_x(x):
  """e^x − 1 − x without cancellation (series for |x| < 0.1)."""
  small = jnp.abs(x) < 0.1
  xs = jnp.where(small, x, 0.0)
  series = 1.0
  for k in range(12, 2, -1):
    series = 1.0 + xs / k * series
  return jnp.where(small, 0.5 * xs * xs * series, jnp.expm1(x) - x)


def _loss_change(inst, log_pi0, delta):
  r"""L(θ₀ + δ) − L(θ₀) without cancellation, π₀ = softmax(θ₀) on the RL support.

  .. math:: \sum_x w_x\Big[\log\big(1 + E_{\pi_0}[e^{\delta'} - 1 - \delta']\big)
            + \langle \pi_0 - d, \delta\rangle_x\Big],\quad \delta' = \delta - E_{\pi_0}\delta
  """
  support = obj.rl_support(inst)
  pi0 = jnp.where(support, jnp.exp(log_pi0), 0.0)
  delta = jnp.where(support, delta, 0.0)
  centred = delta - jnp.sum(pi0 * delta, axis=-1, keepdims=True)
  curv = jnp.log1p(jnp.sum(jnp.where(support, pi0 * _expm1_minus_x(centred), 0.0), axis=-1))
  lin = jnp.sum((pi0 - inst.data) * delta, axis=-1)
  return obj.expect(inst, curv + lin)


@functools.partial(jax.jit, static_argnames=("rtol", "atol"))
def d2_flow_derivatives(inst: Instance, h=None, *, rtol: float = 1e-12, atol: float = 1e-16):
  r"""This project's D2, measured: dL/dt and d²L/dt² at t = 0 from the integrated RL flow.

  Integrates the displacement δ = θ − log ρ forwards and backwards in time to ±h, ±2h and applies
  the fourth-order central stencils to ΔL(t) = L(π_t) − L(ρ), computed without cancellation:
  L̇ ≈ (−ΔL₂ + 8ΔL₁ − 8ΔL₋₁ + ΔL₋₂)/(12h), L̈ ≈ (−ΔL₂ + 16ΔL₁ + 16ΔL₋₁ − ΔL₋₂)/(12h²).

  Args:
    inst: instance (the flow starts at log ρ with reference ρ).
    h: time step (default 1e-2 · min(1/max|∇J_β(log ρ)|, :func:`natural_time`): the logits
      move by at most ~1e-2 and the fastest mode of the flow by ~1e-2 e-folds per step).

  Returns:
    (slope [], curvature [], h [], ok []).
  """
  theta0 = flows.initial_logits(inst)
  g = obj.rl_grad(inst, theta0)
  if h is None:
    g_max = jnp.max(jnp.abs(g))
    h = 1e-2 * jnp.minimum(jnp.where(g_max > 0, 1.0 / jnp.where(g_max > 0, g_max, 1.0), jnp.inf),
                           natural_time(inst))
  h = jnp.asarray(h, theta0.dtype)
  ts = jnp.stack([h, 2 * h])
  zero = jnp.zeros_like(theta0)
  signs = jnp.array([1.0, -1.0], theta0.dtype)
  both, ok = jax.vmap(lambda sg: flows.integrate(_displacement_field, zero, ts,
                                                 (inst, theta0, sg), rtol=rtol, atol=atol))(signs)
  fwd, bwd = both[0], both[1]
  log_pi0 = obj.policy_log_probs(inst, theta0)
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
    dict of closed forms, measured values and ``margin`` (>= 0: agreement within rel_tol).
  """
  slope = initial_slope(inst)
  curv = d2_initial_curvature(inst)
  inst_d = sft_then_rl(inst)
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
  return dict(slope=slope, slope_fd=fd_slope, curvature=curv, curvature_fd=fd_curv,
              curvature_at_d=curv_d, curvature_at_d_fd=fd_curv_d, slope_at_d_fd=fd_slope_d,
              margin=margin)


# ----------------------------------------------------------------------------- D5

def _min_prob(inst, log_pi):
  """[X] min_y π(y|x) over the RL support."""
  pi = jnp.exp(log_pi)
  return jnp.min(jnp.where(obj.rl_support(inst), pi, jnp.inf), axis=-1)


def mu_rl(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """This project's D5 RL PL constant μ_RL = β min_x w_x (min_y π(y|x))² (real prompts)."""
  per_x = inst.prompt_weights * _min_prob(inst, log_pi) ** 2
  return inst.beta * jnp.min(jnp.where(_real(inst), per_x, jnp.inf))


def mu_sft(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """This project's D5 SFT PL constant μ_SFT = ½ min_x w_x min_y π(y|x) (real prompts)."""
  per_x = inst.prompt_weights * _min_prob(inst, log_pi)
  return 0.5 * jnp.min(jnp.where(_real(inst), per_x, jnp.inf))


def rl_gap(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """RL sub-optimality J_β(π*) − J_β(π) = β E_w KL(π‖π*) (B2, no cancellation)."""
  return inst.beta * obj.expect(inst, obj.kl_rows(log_pi, obj.gibbs_tilt(inst)))


def pl_rl(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D5 (RL): ‖∇_θ J_β‖² ≥ 2 μ_RL (J_β(π*) − J_β(π)).

  Returns:
    dict(lhs, rhs, gap, mu, ratio = lhs / (2 μ gap), margin = (lhs − rhs)/(lhs + rhs)).
  """
  theta = flows.logits_of(inst, log_pi)
  lhs = jnp.sum(obj.rl_grad(inst, theta) ** 2)
  gap = rl_gap(inst, log_pi)
  mu = mu_rl(inst, log_pi)
  rhs = 2 * mu * gap
  return dict(lhs=lhs, rhs=rhs, gap=gap, mu=mu, ratio=lhs / rhs,
              margin=_relative_margin(lhs, rhs))


def pl_sft(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D5 (SFT): ‖∇_θ L‖² ≥ 2 μ_SFT (L(π) − L(d)).

  Returns:
    dict(lhs, rhs, gap, mu, ratio, margin) as :func:`pl_rl`.
  """
  theta = flows.logits_of(inst, log_pi)
  lhs = jnp.sum(obj.sft_grad(inst, theta) ** 2)
  gap = obj.sft_excess(inst, log_pi)
  mu = mu_sft(inst, log_pi)
  rhs = 2 * mu * gap
  return dict(lhs=lhs, rhs=rhs, gap=gap, mu=mu, ratio=lhs / rhs,
              margin=_relative_margin(lhs, rhs))


def _augmented_field(state, args):
  theta, _ = state
  inst, kind_rl = args
  log_pi = obj.policy_log_probs(inst, theta)
  f_rl = obj.rl_grad(inst, theta)
  f_sft = -obj.sft_grad(inst, theta)
  field = jnp.where(kind_rl, f_rl, f_sft)
  mu = jnp.where(kind_rl, mu_rl(inst, log_pi), mu_sft(inst, log_pi))
  return field, mu


def pl_decay(inst: Instance, ts: jax.Array, theta0: jax.Array | None = None, *, kind: str = "rl",
             rtol: float = 1e-9, atol: float = 1e-12, max_steps: int = 1 << 16) -> dict:
  r"""This project's D5 decay bound on an integrated flow: gap(t) ≤ gap(0) exp(−2∫₀ᵗ μ(s) ds).

  The integral I(t) = ∫₀ᵗ μ(π_s) ds is integrated with the flow (augmented state), so the check
  is exact up to the solver tolerance.

  Args:
    inst: instance (RL: reference ρ; SFT: data d).
    ts: [T] increasing save times > 0.
    theta0: initial logits (default log ρ).
    kind: "rl" (θ̇ = ∇J_β, gap = J_β* − J_β) or "sft" (θ̇ = −∇L, gap = L − L(d)).

  Returns:
    dict of [T] arrays: times, gap, bound, mu_integral, ratio (PL ratio ‖∇‖²/(2μ gap) at each
    point), log_margin = log bound − log gap (>= 0 holds), and gap0 [], ok [].
  """
  if kind not in ("rl", "sft"):
    raise ValueError(f"kind must be 'rl' or 'sft', got {kind!r}")
  theta0 = flows.initial_logits(inst) if theta0 is None else theta0
  return _pl_decay(inst, jnp.asarray(ts, theta0.dtype), theta0, jnp.asarray(kind == "rl"),
                   rtol=rtol, atol=atol, max_steps=max_steps)


def _pl_stats(inst, log_pi, kind_rl):
  a, b = pl_rl(inst, log_pi), pl_sft(inst, log_pi)
  return {k: jnp.where(kind_rl, a[k], b[k]) for k in ("gap", "ratio")}


@functools.partial(jax.jit, static_argnames=("rtol", "atol", "max_steps"))
def _pl_decay(inst, ts, theta0, kind_rl, *, rtol, atol, max_steps):
  dtype = theta0.dtype
  y0 = (theta0, jnp.zeros((), dtype))
  (thetas, integ), ok = flows.integrate(_augmented_field, y0, ts, (inst, kind_rl), rtol=rtol,
                                        atol=atol, max_steps=max_steps)
  log_pis = jax.vmap(lambda th: obj.policy_log_probs(inst, th))(thetas)
  gap0 = _pl_stats(inst, obj.policy_log_probs(inst, theta0), kind_rl)["gap"]
  stats = jax.vmap(lambda lp: _pl_stats(inst, lp, kind_rl))(log_pis)
  gap = stats["gap"]
  bound = gap0 * jnp.exp(-2 * integ)
  log_margin = (jnp.log(gap0) - 2 * integ) - jnp.log(gap)
  return dict(times=ts, gap=gap, bound=bound, mu_integral=integ, ratio=stats["ratio"],
              log_margin=log_margin, gap0=gap0, ok=ok)


# ----------------------------------------------------------------------------- D6

def spectral_misalignment(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D6: the per-prompt spectral bound on ⟨∇_x L, ∇_x J_β⟩ and its tightness.

  .. math:: |\langle\nabla_{\theta_x}L, \nabla_{\theta_x}J_\beta\rangle|
            \le w_x^2\beta\,\lambda_{\max}(F_x)^2\,\|P(d_x/\pi_x)\|\,\|P\log(\pi^*_x/\pi_x)\|
            \le w_x^2\beta\,(\max_y\pi_x)^2\,\|\cdot\|\,\|\cdot\|

  P centres over the RL support of x. Also the cosine of the full gradients.

  Returns:
    dict of [X] arrays (inner, bound, bound_relaxed, tightness = |inner| / bound,
    margin = (bound_relaxed − |inner|) / bound_relaxed, 0 where the bound is 0) and scalars
    ``margin_min`` (min over real prompts; >= 0 holds) and ``cosine``.
  """
  support = obj.rl_support(inst)
  pi = jnp.exp(log_pi)
  theta = flows.logits_of(inst, log_pi)
  g_l = obj.sft_grad(inst, theta)
  g_j = obj.rl_grad(inst, theta)
  inner = jnp.sum(g_l * g_j, axis=-1)
  n_s = jnp.sum(support, axis=-1, keepdims=True)

  def centred(v):
    v = jnp.where(support, v, 0.0)
    return jnp.where(support, v - jnp.sum(v, axis=-1, keepdims=True) / n_s, 0.0)

  ratio = jnp.where(support, inst.data / jnp.where(support, pi, 1.0), 0.0)
  u = jnp.where(support, obj.gibbs_tilt(inst) - jnp.where(support, log_pi, 0.0), 0.0)
  norm = lambda v: jnp.sqrt(jnp.sum(v ** 2, axis=-1))
  fisher = jnp.where(support[:, :, None] & support[:, None, :],
                     jax.vmap(jnp.diag)(pi) - pi[:, :, None] * pi[:, None, :], 0.0)
  lam_max = jnp.linalg.eigvalsh(fisher)[:, -1]
  w = inst.prompt_weights
  core = w ** 2 * inst.beta * norm(centred(ratio)) * norm(centred(u))
  bound = core * lam_max ** 2
  bound_relaxed = core * jnp.max(jnp.where(support, pi, 0.0), axis=-1) ** 2
  pos = bound_relaxed > 0
  safe = jnp.where(pos, bound_relaxed, 1.0)
  tight = jnp.where(bound > 0, jnp.abs(inner) / jnp.where(bound > 0, bound, 1.0), 0.0)
  margin = jnp.where(pos, (bound_relaxed - jnp.abs(inner)) / safe, 0.0)
  margin_exact = jnp.where(bound > 0, (bound - jnp.abs(inner)) / jnp.where(bound > 0, bound, 1.0),
                           0.0)
  real = _real(inst)
  den = jnp.sqrt(jnp.sum(g_l ** 2) * jnp.sum(g_j ** 2))
  return dict(inner=inner, bound=bound, bound_relaxed=bound_relaxed, tightness=tight,
              margin=margin, margin_exact=margin_exact,
              margin_min=jnp.min(jnp.where(real, jnp.minimum(margin, margin_exact), jnp.inf)),
              tightness_max=jnp.max(jnp.where(real, tight, 0.0)),
              cosine=jnp.where(den > 0, jnp.sum(g_l * g_j) / jnp.where(den > 0, den, 1.0), 0.0))


# ----------------------------------------------------------------------------- D7

def _duration_rate(inst, theta, lam):
  """φ(θ) = dJ/dt − λ dL/dt along θ̇ = ∇J_β: ⟨∇J − λ∇L, ∇J_β⟩ (closed forms)."""
  f = obj.rl_grad(inst, theta)
  grad_j = obj.rl_grad(dataclasses.replace(inst, beta=jnp.zeros_like(inst.beta)), theta)
  return jnp.sum((grad_j - lam * obj.sft_grad(inst, theta)) * f)


def _duration_objective(inst, theta, lam):
  log_pi = obj.policy_log_probs(inst, theta)
  return obj.reward(inst, log_pi) - lam * obj.sft_loss(inst, log_pi)


def _rl_field_args(theta, inst):
  return obj.rl_grad(inst, theta)


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
    pl_margin = (ε gap0 − gap(t_ε)) / (ε gap0) (>= 0 holds), argmax_margin = objective_star −
    max(grid objective) (>= 0 up to rounding), mu_min, ok.
  """
  inst = sft_then_rl(inst)
  theta0 = flows.initial_logits(inst)
  dtype = theta0.dtype
  lam = jnp.asarray(lam, dtype)
  grid = jnp.linspace(0.0, 1.0, n_grid, dtype=dtype) * horizon
  thetas, ok = flows.integrate(_rl_field_args, theta0, grid[1:], inst, rtol=rtol, atol=atol,
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
    th, _ = flows.integrate(_rl_field_args, theta_a, jnp.stack([0.5 * span, span]), inst,
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

  log_pis = jax.vmap(lambda th: obj.policy_log_probs(inst, th))(thetas)
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
  th_eps, ok_eps = flows.integrate(_rl_field_args, thetas[i0], jnp.stack([0.5 * span, span]),
                                   inst, rtol=rtol, atol=atol, max_steps=max_steps)
  th_eps = jnp.where(span > tiny, th_eps[-1], thetas[i0])
  gap0 = rl_gap(inst, log_pis[0])
  gap_eps = rl_gap(inst, obj.policy_log_probs(inst, th_eps))
  target = eps * gap0
  pl_margin = jnp.where(target > 0, (target - gap_eps) / jnp.where(target > 0, target, 1.0),
                        -jnp.abs(gap_eps))
  return dict(t_star=t_star, objective_star=objective_star, rate_star=rate_star,
              interior=interior, grid_times=grid, grid_objective=values, grid_rate=rates,
              t_eps=t_eps, t_eps_in_horizon=in_horizon, mu_min=mu_min, gap0=gap0,
              gap_at_t_eps=gap_eps, pl_margin=pl_margin,
              argmax_margin=objective_star - jnp.max(values), ok=ok & ok_eps)
