r"""The KL terms as trainers implement them and as intended (atomic responses).

- ``k3_loss`` (default): verl's ``kl_penalty(logprob, ref_logprob, "low_var_kl")`` used as a loss
  with the sample y ∼ π_old held fixed. It clamps kl = log ρ(y) − log π(y) to [−20, 20] and the
  value k3 = e^{kl} − kl − 1 to [−10, 10]; a clamped sample contributes no gradient (torch's clamp
  passes the gradient on the closed interval only). Its expected gradient is
  Σ_y π_old(y) m(y) (1 − ρ(y)/π(y)) (e_y − π), m(y) = 1{|kl| ≤ 20, k3 ≤ 10}: where nothing is
  clamped and π_old = π, this is π − ρ = ∇_θ KL(ρ‖π), the *forward* KL.
- ``k3_loss_unclamped``: the same estimator without the clamps (m ≡ 1).
- ``reverse``: the gradient of the intended reverse KL(π‖ρ), F_π (log π − log ρ).
- ``none``: no KL term.

Since k3 ≥ 0 the lower clamps never bind; the upper one binds for kl > 2.6 (ρ/π > 13.6) and
kl < −10.99998 (π/ρ > 5.9e4).

References: volcengine/verl ``verl/trainer/ppo/core_algos.py::kl_penalty`` (``low_var_kl``);
Tang & Munos, arXiv 2506.09477 (pitfalls of KL gradient estimation); fusion-methods.md §3 and its
token-level addendum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import expm1_minus_x, safe_log
from ..objectives import fisher_matvec
from .demonstrations import demo_apply
from .sampling import score

__all__ = ["KL_FORMS", "KL_LOG_RATIO_CLAMP", "K3_VALUE_CLAMP", "k3_unclamped_mask",
           "kl_k3_loss_grad", "kl_reverse_grad", "kl_field", "kl_estimate_row"]

KL_FORMS = ("k3_loss", "k3_loss_unclamped", "reverse", "none")
KL_LOG_RATIO_CLAMP = 20.0   # verl: kl = log ρ − log π clamped to [−20, 20]
K3_VALUE_CLAMP = 10.0       # verl: k3 value clamped to [−10, 10]


def k3_unclamped_mask(log_pi: jax.Array, log_ref: jax.Array) -> jax.Array:
  r"""m(y) = 1{|kl| ≤ 20 and k3(kl) ≤ 10}, kl = log ρ(y) − log π(y): where verl's clamped k3 passes
  a gradient.

  Args:
    log_pi: [...] log π(y).
    log_ref: [...] log ρ(y) (−∞ where ρ = 0: kl is clamped there).

  Returns:
    [...] bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> k3_unclamped_mask(jnp.log(jnp.array([0.5, 0.01, 0.5])),
    ...                   jnp.log(jnp.array([0.5, 0.5, 1e-6]))).tolist()
    [True, False, False]
  """
  kl = log_ref - log_pi
  inside = (kl >= -KL_LOG_RATIO_CLAMP) & (kl <= KL_LOG_RATIO_CLAMP)
  k3 = expm1_minus_x(jnp.clip(kl, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP))
  return inside & (k3 <= K3_VALUE_CLAMP)


def _k3_coefficient(pi, log_pi, ref, clamp: bool):
  """(1 − ρ/π) m per entry: the derivative of k3 in log π, zero where π = 0 or clamped."""
  pos = pi > 0
  if clamp:
    log_ref = safe_log(ref)
    kl = jnp.clip(jnp.where(pos, log_ref - log_pi, 0.0), -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    coef = jnp.where(k3_unclamped_mask(jnp.where(pos, log_pi, 0.0), log_ref), -jnp.expm1(kl), 0.0)
  else:
    coef = 1.0 - ref / jnp.where(pos, pi, 1.0)
  return jnp.where(pos, coef, 0.0)


def kl_k3_loss_grad(pi: jax.Array, pi_old: jax.Array, ref: jax.Array,
                    log_pi: jax.Array | None = None, clamp: bool = True) -> jax.Array:
  r"""Expected gradient of the k3 KL *loss* as trainers implement it (samples y ∼ π_old held fixed).

  .. math:: \mathbb{E}_{y\sim\pi_{old}}\big[m(y)\,(1 - \rho(y)/\pi(y))\,(e_y - \pi)\big]

  k3(y) = ρ/π − log(ρ/π) − 1 differentiated at a fixed sample gives (1 − ρ(y)/π(y)) (e_y − π);
  with ``clamp`` (verl's ``low_var_kl``) only the samples with m(y) = 1 (see
  :func:`k3_unclamped_mask`) contribute. Unclamped and with π_old = π this equals
  π − ρ = ∇_θ KL(ρ‖π) (the *forward* KL). A descent direction; ascent subtracts it.

  Args:
    pi: [X, Y] current policy π.
    pi_old: [X, Y] rollout policy.
    ref: [X, Y] reference ρ.
    log_pi: [X, Y] log π (default log of ``pi``).
    clamp: apply verl's clamps.

  Returns:
    [X, Y] expected gradient of the loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> pi, ref = jnp.array([[0.5, 0.5]]), jnp.array([[0.25, 0.75]])
    >>> kl_k3_loss_grad(pi, pi, ref).tolist()  # π − ρ
    [[0.25, -0.25]]

  References: verl ``core_algos.py::kl_penalty`` (``low_var_kl``); Tang & Munos, arXiv 2506.09477.
  """
  log_pi = safe_log(pi) if log_pi is None else log_pi
  u = jnp.where(pi > 0, pi_old * _k3_coefficient(pi, log_pi, ref, clamp), 0.0)
  return demo_apply(pi, u)


def kl_reverse_grad(pi: jax.Array, log_pi: jax.Array, ref: jax.Array) -> jax.Array:
  r"""∇_θ KL(π‖ρ) = F_π (log π − log ρ) (the intended reverse KL).

  Args:
    pi: [X, Y] policy; log_pi: [X, Y] its log; ref: [X, Y] reference ρ.

  Returns:
    [X, Y] gradient (descent direction).

  Examples:
    >>> import jax.numpy as jnp
    >>> pi = jnp.array([[0.5, 0.5]])
    >>> kl_reverse_grad(pi, jnp.log(pi), jnp.array([[0.5, 0.5]])).tolist()
    [[0.0, 0.0]]
  """
  return fisher_matvec(pi, jnp.where(pi > 0, log_pi - safe_log(ref), 0.0))


def kl_field(pi: jax.Array, log_pi: jax.Array, pi_old: jax.Array, ref: jax.Array,
             form: str) -> jax.Array:
  """The expected KL gradient of one of :data:`KL_FORMS` (a descent direction, [X, Y]).

  Examples:
    >>> import jax.numpy as jnp
    >>> pi, ref = jnp.array([[0.5, 0.5]]), jnp.array([[0.25, 0.75]])
    >>> kl_field(pi, jnp.log(pi), pi, ref, "k3_loss_unclamped").tolist()
    [[0.25, -0.25]]
  """
  if form in ("k3_loss", "k3_loss_unclamped"):
    return kl_k3_loss_grad(pi, pi_old, ref, log_pi, clamp=form == "k3_loss")
  if form == "reverse":
    return kl_reverse_grad(pi, log_pi, ref)
  if form == "none":
    return jnp.zeros_like(pi)
  raise ValueError(f"kl form is {form!r}, expected one of {', '.join(KL_FORMS)}")


def kl_estimate_row(p: jax.Array, lp: jax.Array, p_old: jax.Array, ref: jax.Array,
                    idx: jax.Array, form: str) -> jax.Array:
  r"""[Y] mean over samples idx ∼ π_old of the KL loss gradient as a trainer computes it.

  k3 forms: m(y)(1 − ρ(y)/π(y))(e_y − π) per sample; reverse: (π/π_old)(log π − log ρ)(e_y − π).

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([0.5, 0.5])
    >>> kl_estimate_row(p, jnp.log(p), p, jnp.array([0.25, 0.75]), jnp.array([0]),
    ...                 "k3_loss").tolist()
    [0.25, -0.25]
  """
  grad_log = score(p, idx)
  if form in ("k3_loss", "k3_loss_unclamped"):
    coef = _k3_coefficient(p, lp, ref, form == "k3_loss")[idx]
  elif form == "reverse":
    coef = (p[idx] / p_old[idx]) * (lp[idx] - safe_log(ref)[idx])
  elif form == "none":
    coef = jnp.zeros(idx.shape, p.dtype)
  else:
    raise ValueError(f"kl form is {form!r}, expected one of {', '.join(KL_FORMS)}")
  return jnp.mean(coef[:, None] * grad_log, axis=0)
