r"""Supervised fine-tuning on demonstrations y* ∼ d: g = coef · w_x (d_x − π_x).

UPGE form: π_ref = π_θ, Â ≡ 1, on the demonstration; the estimator uses one demonstration per
prompt.

References: fusion-methods.md §10.
"""

from __future__ import annotations

import dataclasses

import jax

from .base import Recipe, finish, policy
from .options import require_finite
from .sampling import Draws, score

__all__ = ["SFTConfig", "sft_field", "sft_estimate", "SFT"]


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """SFT on demonstrations y* ~ d: g = coef (d − π). UPGE: π_ref = π_θ, Â ≡ 1.

  Attributes:
    coef: coefficient (finite).
  """
  coef: float = 1.0

  def __post_init__(self):
    require_finite(self, "coef")


def sft_field(inst, theta, theta_old, cfg: SFTConfig):
  r"""Exact SFT field coef · w_x (d_x − π_x) = −coef ∇_θ L.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> sft_field(inst, jnp.zeros((1, 2)), None, SFTConfig()).tolist()
    [[-0.5, 0.5]]
  """
  del theta_old
  _, pi = policy(inst, theta)
  return finish(inst, cfg.coef * (inst.data - pi))


def sft_estimate(inst, theta, theta_old, cfg: SFTConfig, draws: Draws):
  r"""Sampled SFT gradient coef · w_x (e_{y*} − π) on one demonstration y* = draws.demo.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> sft_estimate(inst, jnp.zeros((1, 2)), None, SFTConfig(),
    ...              Draws(on=jnp.zeros((1, 0), int), demo=jnp.array([1]))).tolist()
    [[-0.5, 0.5]]
  """
  del theta_old
  _, pi = policy(inst, theta)
  g = jax.vmap(lambda p, i: score(p, i[None])[0])(pi, draws.demo)
  return finish(inst, cfg.coef * g)


SFT = Recipe("sft", SFTConfig(), sft_field, sft_estimate, lambda cfg: 0,
             "π_ref = π_θ, Â ≡ 1 on y* ~ d: g = d − π")
