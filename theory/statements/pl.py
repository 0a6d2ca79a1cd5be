r"""Polyak–Łojasiewicz inequalities for tabular softmax (this project's D5; not the paper's).

- RL: ‖∇_θ J_β‖² ≥ 2 μ_RL (J_β(π*) − J_β(π)) with μ_RL = β min_x w_x (min_y π(y|x))².
- SFT: ‖∇_θ L‖² ≥ 2 μ_SFT (L(π) − L(d)) with μ_SFT = ½ min_x w_x min_y π(y|x).
- Along a flow, gap(t) ≤ gap(0) exp(−2∫₀ᵗ μ(s) ds) with μ(s) the formula at the current policy.

Proof sketch (RL): ∇ = w β F u, u = log(π*/π); on 1^⊥ the eigenvalues of F are ≥ min π by
interlacing; KL(π‖π*) = log E_π e^u − E_π u ≤ osc(u)²/8 ≤ ‖u − ū‖²/2. (SFT): KL(d‖π) ≤ χ²(d‖π)
≤ ‖d − π‖²/min π.

Rounding (see :mod:`..verdict`): the gaps are KLs in non-negative form (B2: β KL(π‖π*); B1:
KL(d‖π)), never negative, with the scales of :func:`~..rounding.kl_scale`; the gradients' entries
have error scale w π (H + Σ π H)(1 + |θ_y| + max|θ|) (RL, H = |r| + β(1 + |log π| + |log ρ|)) or
w (π (1 + |θ_y| + max|θ|) + d) (SFT); μ has relative error 2u(1 + 2 max|θ|). The relative margin
(lhs − rhs)/(lhs + rhs) moves by at most 2(δlhs + δrhs)/(lhs + rhs).

References:
  Karimi, Nutini, Schmidt, "Linear convergence of gradient and proximal-gradient methods under the
  Polyak–Łojasiewicz condition" (ECML 2016); Mei et al., "On the global convergence rates of
  softmax policy gradient methods" (ICML 2020).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..flows import integrate
from ..instance import Instance
from ..objectives import (
  expect,
  gibbs,
  initial_logits,
  kl_to_gibbs,
  logits_of,
  policy_log_probs,
  rl_grad,
  rl_support,
  safe_log,
  sft_excess,
  sft_grad,
)
from ..rounding import abs_log, entries, kl_scale, kl_to_gibbs_scale
from ..verdict import rounding_slack

__all__ = ["mu_rl", "mu_sft", "rl_gap", "rl_gap_scale", "sft_gap_scale", "grad_scales", "pl_rl",
           "pl_sft",
           "pl_decay", "relative_margin"]


def relative_margin(lhs_big, rhs_small):
  """(lhs − rhs) / (|lhs| + |rhs|), 0 when both vanish: >= 0 iff lhs >= rhs; in [−1, 1].

  Examples:
    >>> # (3 − 1)/(3 + 1); both vanish
    >>> float(relative_margin(3.0, 1.0)), float(relative_margin(0.0, 0.0))
    (0.5, 0.0)
  """
  den = jnp.abs(lhs_big) + jnp.abs(rhs_small)
  return jnp.where(den > 0, (lhs_big - rhs_small) / jnp.where(den > 0, den, 1.0), 0.0)


def _real(inst):
  return inst.prompt_weights > 0


def _min_prob(inst, log_pi):
  """[X] min_y π(y|x) over the RL support."""
  pi = jnp.exp(log_pi)
  return jnp.min(jnp.where(rl_support(inst), pi, jnp.inf), axis=-1)


def mu_rl(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """This project's D5 RL PL constant μ_RL = β min_x w_x (min_y π(y|x))² (real prompts).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(mu_rl(inst, jnp.log(inst.data)))  # β min_x w_x (min_y π)² = ¼
    0.25
  """
  per_x = inst.prompt_weights * _min_prob(inst, log_pi) ** 2
  return inst.beta * jnp.min(jnp.where(_real(inst), per_x, jnp.inf))


def mu_sft(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """This project's D5 SFT PL constant μ_SFT = ½ min_x w_x min_y π(y|x) (real prompts).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(mu_sft(inst, jnp.log(inst.data)))  # ½ min_x w_x min_y π = ¼
    0.25
  """
  per_x = inst.prompt_weights * _min_prob(inst, log_pi)
  return 0.5 * jnp.min(jnp.where(_real(inst), per_x, jnp.inf))


def rl_gap(inst: Instance, log_pi: jax.Array, t=None) -> jax.Array:
  """RL sub-optimality J_β(π*) − J_β(π) = β E_w KL(π‖π*) (B2, no cancellation, ≥ 0).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(rl_gap(inst, jnp.log(inst.data))), 6)  # β KL(ρ‖π*) = log((1 + e)/2) − ½
    0.120115
  """
  return inst.beta * expect(inst, kl_to_gibbs(inst, log_pi, t))


def rl_gap_scale(inst: Instance, log_pi: jax.Array, t=None) -> jax.Array:
  """[] error scale of :func:`rl_gap` (β × the KL scale).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(rl_gap_scale(inst, jnp.log(inst.data))) > 0  # a positive error scale
    True
  """
  return inst.beta * expect(inst, kl_to_gibbs_scale(inst, log_pi, t=t))


def sft_gap_scale(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """[] error scale of the SFT gap L(π) − L(d) = E_w KL(d‖π).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(sft_gap_scale(inst, jnp.log(jnp.array([[0.25, 0.75]])))) > 0  # a positive error scale
    True
  """
  log_d = safe_log(inst.data)
  return expect(inst, kl_scale(log_d, log_pi, abs_log(log_d), abs_log(log_pi)))


def grad_scales(inst: Instance, log_pi: jax.Array, theta: jax.Array):
  """([X, Y] error scales of ∇J_β and ∇L entries, max conditioning) (module docstring).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> g_rl, g_sft, cond = grad_scales(inst, jnp.log(inst.data), jnp.log(inst.data))
    >>> g_rl.shape, g_sft.shape  # [X, Y] per-entry scales
    ((1, 2), (1, 2))
  """
  support = rl_support(inst)
  pi = jnp.exp(log_pi)
  th = jnp.where(support, jnp.abs(theta), 0.0)
  cond = 1.0 + th + jnp.max(th, axis=-1, keepdims=True)
  h = jnp.where(support, jnp.abs(inst.reward) + inst.beta * (
      1.0 + abs_log(log_pi) + abs_log(safe_log(inst.reference))), 0.0)
  w = inst.prompt_weights[:, None]
  rl = jnp.where(support, w * pi * cond * (h + jnp.sum(pi * h, axis=-1, keepdims=True)), 0.0)
  sft = jnp.where(support, w * (pi * cond + inst.data), 0.0)
  return rl, sft, jnp.max(jnp.where(inst.prompt_weights[:, None] > 0, cond, 0.0))


def _pl_result(inst, grad, grad_scale, gap, gap_scale, mu, cond):
  lhs = jnp.sum(grad ** 2)
  rhs = 2 * mu * gap
  err_lhs = 2.0 * jnp.sum(jnp.abs(grad) * grad_scale) + lhs
  err_rhs = 2.0 * mu * gap_scale + rhs * (3.0 + 2.0 * cond)
  den = jnp.abs(lhs) + jnp.abs(rhs)
  slack = jnp.where(den > 0, 2.0 * rounding_slack(err_lhs + err_rhs, entries(inst))
                    / jnp.where(den > 0, den, 1.0), 0.0)
  return dict(lhs=lhs, rhs=rhs, gap=gap, mu=mu, ratio=lhs / rhs,
              margin=relative_margin(lhs, rhs), slack=slack)


def pl_rl(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D5 (RL): ‖∇_θ J_β‖² ≥ 2 μ_RL (J_β(π*) − J_β(π)).

  Returns:
    dict(lhs, rhs, gap, mu, ratio = lhs / (2 μ gap), margin = (lhs − rhs)/(lhs + rhs), slack =
    the margin's rounding bound).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> out = pl_rl(inst, jnp.log(inst.data))
    >>> round(float(out['lhs']), 6), round(float(out['rhs']), 6)  # ‖F_d r‖² = 1/8 ≥ 2 · ¼ · C₁
    (0.125, 0.060057)
  """
  theta = logits_of(inst, log_pi)
  scale_rl, _, cond = grad_scales(inst, log_pi, theta)
  t = gibbs(inst)
  return _pl_result(inst, rl_grad(inst, theta), scale_rl, rl_gap(inst, log_pi, t),
                    rl_gap_scale(inst, log_pi, t), mu_rl(inst, log_pi), cond)


def pl_sft(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D5 (SFT): ‖∇_θ L‖² ≥ 2 μ_SFT (L(π) − L(d)).

  Returns:
    dict(lhs, rhs, gap, mu, ratio, margin, slack) as :func:`pl_rl`.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> out = pl_sft(inst, jnp.log(jnp.array([[0.25, 0.75]])))
    >>> round(float(out['lhs']), 6), round(float(out['rhs']), 6)  # ‖π − d‖² = 1/8 ≥ 2 · ⅛ · KL(d‖π)
    (0.125, 0.03596)
  """
  theta = logits_of(inst, log_pi)
  _, scale_sft, cond = grad_scales(inst, log_pi, theta)
  return _pl_result(inst, sft_grad(inst, theta), scale_sft, sft_excess(inst, log_pi),
                    sft_gap_scale(inst, log_pi), mu_sft(inst, log_pi), cond)


def _augmented_field(state, args):
  theta, _ = state
  inst, kind_rl = args
  log_pi = policy_log_probs(inst, theta)
  f_rl = rl_grad(inst, theta)
  f_sft = -sft_grad(inst, theta)
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
    point), log_margin = log bound − log gap (>= 0 holds), gap_scale (the gaps' rounding scales),
    and gap0 [], gap0_scale [], ok [].

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> out = pl_decay(inst, jnp.array([0.5, 1.0]))  # the RL flow from log ρ
    >>> bool(out["ok"]), bool(jnp.all(out["gap"] <= out["bound"]))  # gap(t) ≤ gap(0) e^{−2∫μ}
    (True, True)
  """
  if kind not in ("rl", "sft"):
    raise ValueError(f"kind must be 'rl' or 'sft', got {kind!r}")
  theta0 = initial_logits(inst) if theta0 is None else theta0
  return _pl_decay(inst, jnp.asarray(ts, theta0.dtype), theta0, jnp.asarray(kind == "rl"),
                   rtol=rtol, atol=atol, max_steps=max_steps)


def _pl_stats(inst, log_pi, kind_rl):
  a, b = pl_rl(inst, log_pi), pl_sft(inst, log_pi)
  out = {k: jnp.where(kind_rl, a[k], b[k]) for k in ("gap", "ratio")}
  out["gap_scale"] = jnp.where(kind_rl, rl_gap_scale(inst, log_pi), sft_gap_scale(inst, log_pi))
  return out


@functools.partial(jax.jit, static_argnames=("rtol", "atol", "max_steps"))
def _pl_decay(inst, ts, theta0, kind_rl, *, rtol, atol, max_steps):
  dtype = theta0.dtype
  y0 = (theta0, jnp.zeros((), dtype))
  (thetas, integ), ok = integrate(_augmented_field, y0, ts, (inst, kind_rl), rtol=rtol,
                                        atol=atol, max_steps=max_steps)
  log_pis = jax.vmap(lambda th: policy_log_probs(inst, th))(thetas)
  start = _pl_stats(inst, policy_log_probs(inst, theta0), kind_rl)
  gap0 = start["gap"]
  stats = jax.vmap(lambda lp: _pl_stats(inst, lp, kind_rl))(log_pis)
  gap = stats["gap"]
  bound = gap0 * jnp.exp(-2 * integ)
  log_margin = (jnp.log(gap0) - 2 * integ) - jnp.log(gap)
  return dict(times=ts, gap=gap, bound=bound, mu_integral=integ, ratio=stats["ratio"],
              log_margin=log_margin, gap_scale=stats["gap_scale"], gap0=gap0,
              gap0_scale=start["gap_scale"], ok=ok)
