r"""The KL term alone, as a recipe: k3 as a loss (as implemented, clamped) or the reverse KL.

Ascent field −coef · ∇KL with ∇KL one of :data:`~.kl.KL_FORMS` (see :mod:`.kl`).

References: verl ``core_algos.py::kl_penalty`` (``low_var_kl``); Tang & Munos, arXiv 2506.09477;
fusion-methods.md §3.
"""

from __future__ import annotations

import dataclasses

import jax

from .base import Recipe, finish, policy
from .kl import KL_FORMS, kl_estimate_row, kl_field
from .options import require_choice, require_finite, require_int
from .sampling import Draws

__all__ = ["KLConfig", "kl_penalty_field", "kl_penalty_estimate", "KL_K3", "KL_REVERSE"]


@dataclasses.dataclass(frozen=True)
class KLConfig:
  """The KL term alone.

  Attributes:
    coef: coefficient (finite).
    form: one of KL_FORMS (default ``k3_loss``: verl's clamped low_var_kl as a loss, whose
      gradient is −(π − ρ) where nothing is clamped).
    samples: on-policy samples per prompt of one estimator call (≥ 1).
  """
  coef: float = 1.0
  form: str = "k3_loss"
  samples: int = 1

  def __post_init__(self):
    require_finite(self, "coef")
    require_choice(self, "form", KL_FORMS)
    require_int(self, "samples", 1)


def kl_penalty_field(inst, theta, theta_old, cfg: KLConfig):
  r"""Exact ascent field −coef · w_x ∇KL (samples from π_old for the k3 forms).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.25, 0.75]])
    >>> kl_penalty_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)),
    ...                  KLConfig(form="k3_loss_unclamped")).tolist()  # −(π − ρ)
    [[-0.25, 0.25]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  return finish(inst, -cfg.coef * kl_field(pi, log_pi, pi_old, inst.reference, cfg.form))


def kl_penalty_estimate(inst, theta, theta_old, cfg: KLConfig, draws: Draws):
  r"""The sampled KL loss gradient (negated) on draws.on ∼ π_old, averaged per prompt.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.25, 0.75]])
    >>> draws = Draws(on=jnp.array([[1]]), demo=jnp.array([0]))
    >>> kl_penalty_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)),
    ...                     KLConfig(form="k3_loss_unclamped"), draws).tolist()
    [[-0.25, 0.25]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  g = jax.vmap(lambda p, lp, po, ref, idx: kl_estimate_row(p, lp, po, ref, idx, cfg.form))(
      pi, log_pi, pi_old, inst.reference, draws.on)
  return finish(inst, -cfg.coef * g)


KL_K3 = Recipe("kl_k3", KLConfig(), kl_penalty_field, kl_penalty_estimate, lambda cfg: cfg.samples,
               "k3 KL as a loss (as implemented, clamped): g = −(π − ρ), the forward KL")
KL_REVERSE = dataclasses.replace(KL_K3, name="kl_reverse", config=KLConfig(form="reverse"),
                                 summary="reverse KL (as intended): g = −F_π log(π/ρ)")
