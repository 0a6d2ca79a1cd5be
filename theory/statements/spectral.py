r"""Gradient misalignment and its spectral bound (this project's D6; not the paper's).

Per prompt |⟨∇_{θ_x}L, ∇_{θ_x}J_β⟩| ≤ w_x² β λ_max(F_x)² ‖P(d_x/π_x)‖ ‖P log(π*_x/π_x)‖ with P the
centring, and λ_max(F_x) ≤ max_y π(y|x). As π concentrates, F's spectrum collapses and the two
gradients lose their coupling; the bound's tightness is reported.

Rounding (see :mod:`..verdict`): per prompt the inner product has error scale
Σ_y (|∇L| E_J + E_L |∇J| + |∇L||∇J|) (E the gradients' entry scales of
:func:`~.pl.grad_scales`); the bound's relative error scale is 6 + 2 max|θ| plus the
conditioning of its centred norms, ‖(d/π) ⊙ cond‖/‖P(d/π)‖ and ‖T + |log π|‖/‖P log(π*/π)‖ (T the
error scale of log π*), and for the exact form |Y|(1 + cond) for the eigenvalue (a backward-stable
symmetric eigensolver). A margin (B − |I|)/B then moves by δ|I|/B + (|I|/B) δB/B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import gibbs_tilt, logits_of, rl_grad, rl_support, sft_grad
from ..rounding import abs_log, entries, gibbs_scale
from ..verdict import gamma_for
from .pl import grad_scales

__all__ = ["spectral_misalignment"]


def spectral_misalignment(inst: Instance, log_pi: jax.Array) -> dict:
  r"""This project's D6: the per-prompt spectral bound on ⟨∇_x L, ∇_x J_β⟩ and its tightness.

  .. math:: |\langle\nabla_{\theta_x}L, \nabla_{\theta_x}J_\beta\rangle|
            \le w_x^2\beta\,\lambda_{\max}(F_x)^2\,\|P(d_x/\pi_x)\|\,\|P\log(\pi^*_x/\pi_x)\|
            \le w_x^2\beta\,(\max_y\pi_x)^2\,\|\cdot\|\,\|\cdot\|

  P centres over the RL support of x. Also the cosine of the full gradients.

  Returns:
    dict of [X] arrays (inner, bound, bound_relaxed, tightness = |inner| / bound,
    margin = (bound_relaxed − |inner|) / bound_relaxed, 0 where the bound is 0, margin_exact the
    same with the eigenvalue form, and their rounding bounds slack, slack_exact) and scalars
    ``margin_min``, ``slack_min`` (the margin and slack of the real prompt and form where
    margin + slack is least: the statement fails iff margin_min < −slack_min) and ``cosine``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> out = spectral_misalignment(inst, jnp.log(inst.data))
    >>> bool(out['margin'] >= -out['slack'])  # ⟨∇L, ∇J_β⟩ within the spectral bound
    True
  """
  support = rl_support(inst)
  pi = jnp.exp(log_pi)
  theta = logits_of(inst, log_pi)
  g_l = sft_grad(inst, theta)
  g_j = rl_grad(inst, theta)
  inner = jnp.sum(g_l * g_j, axis=-1)
  n_s = jnp.sum(support, axis=-1, keepdims=True)

  def centred(v):
    v = jnp.where(support, v, 0.0)
    return jnp.where(support, v - jnp.sum(v, axis=-1, keepdims=True) / n_s, 0.0)

  ratio = jnp.where(support, inst.data / jnp.where(support, pi, 1.0), 0.0)
  u = jnp.where(support, gibbs_tilt(inst) - jnp.where(support, log_pi, 0.0), 0.0)
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
  # Rounding bounds (module docstring).
  g = gamma_for(entries(inst), pi.dtype)
  e_j, e_l, cond = grad_scales(inst, log_pi, theta)
  err_inner = jnp.sum(jnp.abs(g_l) * e_j + e_l * jnp.abs(g_j) + jnp.abs(g_l * g_j), axis=-1)
  th = jnp.where(support, jnp.abs(theta), 0.0)
  cond_y = 1.0 + th + jnp.max(th, axis=-1, keepdims=True)
  ts = gibbs_scale(inst)
  rel_norms = (_ratio_of(norm(ratio * cond_y), norm(centred(ratio)))
               + _ratio_of(norm(jnp.where(support, ts.log_pi + abs_log(log_pi), 0.0)),
                           norm(centred(u))))
  rel_bound = 6.0 + 2.0 * cond + rel_norms
  rel_eig = rel_bound + n_s[:, 0] * (1.0 + cond)
  used = jnp.abs(inner)
  slack = g * jnp.where(pos, (err_inner + used * rel_bound) / safe, 0.0)
  slack_exact = g * jnp.where(bound > 0, (err_inner + used * rel_eig)
                              / jnp.where(bound > 0, bound, 1.0), 0.0)
  real = inst.prompt_weights > 0
  both_m = jnp.stack([margin, margin_exact])
  both_s = jnp.stack([slack, slack_exact])
  key = jnp.where(real[None, :], both_m + both_s, jnp.inf)
  k = jnp.argmin(key)
  den = jnp.sqrt(jnp.sum(g_l ** 2) * jnp.sum(g_j ** 2))
  return dict(inner=inner, bound=bound, bound_relaxed=bound_relaxed, tightness=tight,
              margin=margin, margin_exact=margin_exact, slack=slack, slack_exact=slack_exact,
              margin_min=both_m.reshape(-1)[k], slack_min=both_s.reshape(-1)[k],
              tightness_max=jnp.max(jnp.where(real, tight, 0.0)),
              cosine=jnp.where(den > 0, jnp.sum(g_l * g_j) / jnp.where(den > 0, den, 1.0), 0.0))


def _ratio_of(num, den):
  """num / den where den > 0 (else 0: the bound is 0 there and the margin is defined as 0)."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
