r"""Polyak–Łojasiewicz inequalities for tabular softmax (this project's D5; not the paper's).

- RL: ‖∇_θ J_β‖² ≥ 2 μ_RL (J_β(π*) − J_β(π)) with μ_RL = β min_x w_x (min_y π(y|x))².
- SFT: ‖∇_θ L‖² ≥ 2 μ_SFT (L(π) − L(d)) with μ_SFT = ½ min_x w_x min_y π(y|x).
- Along a flow, gap(t) ≤ gap(0) exp(−2∫₀ᵗ μ(s) ds) with μ(s) the formula at the current policy.

Proof sketch (RL): ∇ = w β F u, u = log(π*/π); on 1^⊥ the eigenvalues of F are ≥ min π by
interlacing; KL(π‖π*) = log E_π e^u − E_π u ≤ osc(u)²/8 ≤ ‖u − ū‖²/2. (SFT): KL(d‖π) ≤ χ²(d‖π)
≤ ‖d − π‖²/min π.

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
  gibbs_tilt,
  initial_logits,
  kl_rows,
  logits_of,
  policy_log_probs,
  rl_grad,
  rl_support,
  sft_excess,
  sft_grad,
)

__all__ = ["mu_rl", "mu_sft", "rl_gap", "pl_rl", "pl_sft", "pl_decay", "relative_margin"]


def relative_margin(lhs_big, rhs_small):
  """(lhs − rhs) / (|lhs| + |rhs|), 0 when both vanish: >= 0 iff lhs >= rhs; in [−1, 1]."""
  den = jnp.abs(lhs_big) + jnp.abs(rhs_small)
  return jnp.where(den > 0, (lhs_big - rhs_small) / jnp.where(den > 0, den, 1.0), 0.0)


def _real(inst):
  return inst.prompt_weights > 0


def _min_prob(inst, log_pi):
  """[X] min_y π(y|x) over the RL support."""
  pi = jnp.exp(log_pi)
  return jnp.min(jnp.where(rl_support(inst), pi, jnp.inf), axis=-1)


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
  return inst.beta * expect(inst, kl_rows(log_pi, gibbs_tilt(inst)))


def pl_rl(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D5 (RL): ‖∇_θ J_β‖² ≥ 2 μ_RL (J_β(π*) − J_β(π)).

  Returns:
    dict(lhs, rhs, gap, mu, ratio = lhs / (2 μ gap), margin = (lhs − rhs)/(lhs + rhs)).
  """
  theta = logits_of(inst, log_pi)
  lhs = jnp.sum(rl_grad(inst, theta) ** 2)
  gap = rl_gap(inst, log_pi)
  mu = mu_rl(inst, log_pi)
  rhs = 2 * mu * gap
  return dict(lhs=lhs, rhs=rhs, gap=gap, mu=mu, ratio=lhs / rhs,
              margin=relative_margin(lhs, rhs))


def pl_sft(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D5 (SFT): ‖∇_θ L‖² ≥ 2 μ_SFT (L(π) − L(d)).

  Returns:
    dict(lhs, rhs, gap, mu, ratio, margin) as :func:`pl_rl`.
  """
  theta = logits_of(inst, log_pi)
  lhs = jnp.sum(sft_grad(inst, theta) ** 2)
  gap = sft_excess(inst, log_pi)
  mu = mu_sft(inst, log_pi)
  rhs = 2 * mu * gap
  return dict(lhs=lhs, rhs=rhs, gap=gap, mu=mu, ratio=lhs / rhs,
              margin=relative_margin(lhs, rhs))


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
    point), log_margin = log bound − log gap (>= 0 holds), and gap0 [], ok [].
  """
  if kind not in ("rl", "sft"):
    raise ValueError(f"kind must be 'rl' or 'sft', got {kind!r}")
  theta0 = initial_logits(inst) if theta0 is None else theta0
  return _pl_decay(inst, jnp.asarray(ts, theta0.dtype), theta0, jnp.asarray(kind == "rl"),
                   rtol=rtol, atol=atol, max_steps=max_steps)


def _pl_stats(inst, log_pi, kind_rl):
  a, b = pl_rl(inst, log_pi), pl_sft(inst, log_pi)
  return {k: jnp.where(kind_rl, a[k], b[k]) for k in ("gap", "ratio")}


@functools.partial(jax.jit, static_argnames=("rtol", "atol", "max_steps"))
def _pl_decay(inst, ts, theta0, kind_rl, *, rtol, atol, max_steps):
  dtype = theta0.dtype
  y0 = (theta0, jnp.zeros((), dtype))
  (thetas, integ), ok = integrate(_augmented_field, y0, ts, (inst, kind_rl), rtol=rtol,
                                        atol=atol, max_steps=max_steps)
  log_pis = jax.vmap(lambda th: policy_log_probs(inst, th))(thetas)
  gap0 = _pl_stats(inst, policy_log_probs(inst, theta0), kind_rl)["gap"]
  stats = jax.vmap(lambda lp: _pl_stats(inst, lp, kind_rl))(log_pis)
  gap = stats["gap"]
  bound = gap0 * jnp.exp(-2 * integ)
  log_margin = (jnp.log(gap0) - 2 * integ) - jnp.log(gap)
  return dict(times=ts, gap=gap, bound=bound, mu_integral=integ, ratio=stats["ratio"],
              log_margin=log_margin, gap0=gap0, ok=ok)
