r"""The KL term alone, as a recipe: k3 as a loss (as implemented) or the reverse KL (as intended).

References: Tang & Munos, arXiv 2506.09477; fusion-methods.md §3.
"""

from __future__ import annotations

import dataclasses

import jax

from .base import Recipe, finish, policy
from .kl import kl_estimate_row, kl_field
from .sampling import Draws

__all__ = ["KLConfig", "kl_penalty_field", "kl_penalty_estimate", "KL_K3", "KL_REVERSE"]


@dataclasses.dataclass(frozen=True)
class KLConfig:
  """The KL term alone: "k3_loss" (as trainers implement it: ascent −(π − ρ)) or "reverse"."""
  coef: float = 1.0
  form: str = "k3_loss"
  samples: int = 1


def kl_penalty_field(inst, theta, theta_old, cfg: KLConfig):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  return finish(inst, -cfg.coef * kl_field(pi, log_pi, pi_old, inst.reference, cfg.form))


def kl_penalty_estimate(inst, theta, theta_old, cfg: KLConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  g = jax.vmap(lambda p, lp, po, ref, idx: kl_estimate_row(p, lp, po, ref, idx, cfg.form))(
      pi, log_pi, pi_old, inst.reference, draws.on)
  return finish(inst, -cfg.coef * g)


KL_K3 = Recipe("kl_k3", KLConfig(), kl_penalty_field, kl_penalty_estimate, lambda cfg: cfg.samples,
               "k3 KL as a loss (as implemented): g = −(π − ρ), the forward KL")
KL_REVERSE = dataclasses.replace(KL_K3, name="kl_reverse", config=KLConfig(form="reverse"),
                                 summary="reverse KL (as intended): g = −F_π log(π/ρ)")
