r"""REINFORCE (Ahmadian et al., arXiv 2402.14740): g = w_x F_π r; a value baseline only lowers variance.

UPGE form: π_ref = π_θ, Â = r − V.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import fisher_matvec
from .base import Recipe, finish, policy
from .groups import value
from .sampling import Draws, score

__all__ = ["ReinforceConfig", "reinforce_field", "reinforce_estimate", "REINFORCE"]


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
  """REINFORCE (Ahmadian et al.): g = F_π r; the value baseline only lowers the variance."""
  baseline: bool = True


def reinforce_field(inst, theta, theta_old, cfg: ReinforceConfig):
  del theta_old, cfg
  _, pi = policy(inst, theta)
  return finish(inst, fisher_matvec(pi, inst.reward))


def reinforce_estimate(inst, theta, theta_old, cfg: ReinforceConfig, draws: Draws):
  _, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  base = value(pi, inst.reward)[:, 0] if cfg.baseline else jnp.zeros(pi.shape[0], pi.dtype)

  def row(p, p_old, r, b, idx):
    ratio = p[idx] / p_old[idx]  # 1 on-policy (θ_old = θ)
    return jnp.mean((ratio * (r[idx] - b))[:, None] * score(p, idx), axis=0)
  return finish(inst, jax.vmap(row)(pi, pi_old, inst.reward, base, draws.on))


REINFORCE = Recipe("reinforce", ReinforceConfig(), reinforce_field, reinforce_estimate,
                   lambda cfg: 1, "π_ref = π_θ, Â = r (− V): g = F_π r")
