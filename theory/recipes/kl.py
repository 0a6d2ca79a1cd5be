r"""The KL terms as trainers implement them and as intended (atomic responses).

- ``k3_loss``: the k3 estimator k3(y) = ρ/π − log(ρ/π) − 1 used as a loss with the sample held fixed
  (verl ``low_var_kl``); its expected gradient over y ∼ π is π − ρ = ∇_θ KL(ρ‖π), the *forward* KL.
- ``reverse``: the gradient of the intended reverse KL(π‖ρ), F_π (log π − log ρ).
- ``none``: no KL term.

References: Tang & Munos, arXiv 2506.09477 (pitfalls of KL gradient estimation); fusion-methods.md §3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..objectives import fisher_matvec, safe_log
from .demonstrations import demo_apply
from .sampling import score

__all__ = ["KL_FORMS", "kl_k3_loss_grad", "kl_reverse_grad", "kl_field", "kl_estimate_row"]

KL_FORMS = ("k3_loss", "reverse", "none")


def kl_k3_loss_grad(pi: jax.Array, pi_old: jax.Array, ref: jax.Array) -> jax.Array:
  r"""Expected gradient of the k3 KL *loss* as trainers implement it (samples y ∼ π_old held fixed).

  k3(y) = ρ/π − log(ρ/π) − 1 differentiated at a fixed sample gives (1 − ρ(y)/π(y)) (e_y − π);
  its expectation over y ∼ π_old is Σ_y π_old(y)(1 − ρ(y)/π(y))(e_y − π), which equals
  π − ρ = ∇_θ KL(ρ‖π) (the *forward* KL) when π_old = π.

  References: Tang & Munos, arXiv 2506.09477; fusion-methods.md §3.
  """
  ratio = jnp.where(pi > 0, ref / jnp.where(pi > 0, pi, 1.0), 0.0)
  u = jnp.where(pi > 0, pi_old * (1.0 - ratio), 0.0)
  return demo_apply(pi, u)


def kl_reverse_grad(pi: jax.Array, log_pi: jax.Array, ref: jax.Array) -> jax.Array:
  r"""∇_θ KL(π‖ρ) = F_π (log π − log ρ) (the intended reverse KL)."""
  return fisher_matvec(pi, jnp.where(pi > 0, log_pi - safe_log(ref), 0.0))


def kl_field(pi, log_pi, pi_old, ref, form):
  if form == "k3_loss":
    return kl_k3_loss_grad(pi, pi_old, ref)
  if form == "reverse":
    return kl_reverse_grad(pi, log_pi, ref)
  if form == "none":
    return jnp.zeros_like(pi)
  raise ValueError(f"kl form is {form!r}, expected 'k3_loss', 'reverse' or 'none'")


def kl_estimate_row(p, lp, p_old, ref, idx, form):
  """Per-row mean over samples idx ~ π_old of the KL gradient estimator."""
  grad_log = score(p, idx)
  if form == "k3_loss":
    coef = 1.0 - ref[idx] / p[idx]
  elif form == "reverse":
    coef = (p[idx] / p_old[idx]) * (lp[idx] - safe_log(ref)[idx])
  elif form == "none":
    coef = jnp.zeros(idx.shape, p.dtype)
  else:
    raise ValueError(f"kl form is {form!r}, expected 'k3_loss', 'reverse' or 'none'")
  return jnp.mean(coef[:, None] * grad_log, axis=0)
