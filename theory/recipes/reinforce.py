r"""REINFORCE (Ahmadian et al., arXiv 2402.14740): g = w_x F_π r; a baseline only lowers variance.

UPGE form: π_ref = π_θ, Â = r − V.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import fisher_matvec
from .base import Recipe, finish, policy
from .groups import value
from .options import require_bool
from .sampling import Draws, score

__all__ = ["ReinforceConfig", "reinforce_field", "reinforce_estimate", "REINFORCE"]


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
  """REINFORCE (Ahmadian et al.): g = F_π r; the value baseline only lowers the variance.

  Attributes:
    baseline: subtract V = E_π r in the estimator (True or False).
  """
  baseline: bool = True

  def __post_init__(self):
    require_bool(self, "baseline")


def reinforce_field(inst, theta, theta_old, cfg: ReinforceConfig):
  r"""Exact REINFORCE field w_x F_π r = ∇_θ J.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> reinforce_field(inst, jnp.zeros((1, 2)), None, ReinforceConfig()).tolist()
    [[-0.25, 0.25]]
  """
  del theta_old, cfg
  _, pi = policy(inst, theta)
  return finish(inst, fisher_matvec(pi, inst.reward))


def reinforce_estimate(inst, theta, theta_old, cfg: ReinforceConfig, draws: Draws):
  r"""Sampled REINFORCE gradient: mean over y_i of (π/π_old)(y_i)(r(y_i) − V)(e_{y_i} − π).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> reinforce_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), ReinforceConfig(),
    ...                    Draws(on=jnp.array([[1]]), demo=jnp.array([0]))).tolist()
    [[-0.25, 0.25]]
  """
  _, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  base = value(pi, inst.reward)[:, 0] if cfg.baseline else jnp.zeros(pi.shape[0], pi.dtype)

  def row(p, p_old, r, b, idx):
    ratio = p[idx] / p_old[idx]  # 1 on-policy (θ_old = θ)
    return jnp.mean((ratio * (r[idx] - b))[:, None] * score(p, idx), axis=0)
  return finish(inst, jax.vmap(row)(pi, pi_old, inst.reward, base, draws.on))


REINFORCE = Recipe("reinforce", ReinforceConfig(), reinforce_field, reinforce_estimate,
                   lambda cfg: 1, "π_ref = π_θ, Â = r (− V): g = F_π r")
