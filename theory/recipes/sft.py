r"""Supervised fine-tuning on demonstrations y* ∼ d: g = coef · w_x (d_x − π_x).

UPGE form: π_ref = π_θ, Â ≡ 1, on the demonstration. The estimator uses one demonstration per prompt.

References: fusion-methods.md §10.
"""

from __future__ import annotations

import dataclasses

import jax

from .base import Recipe, finish, policy
from .sampling import Draws, score

__all__ = ["SFTConfig", "sft_field", "sft_estimate", "SFT"]


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """SFT on demonstrations y* ~ d: g = coef (d − π). UPGE: π_ref = π_θ, Â ≡ 1."""
  coef: float = 1.0


def sft_field(inst, theta, theta_old, cfg: SFTConfig):
  del theta_old
  _, pi = policy(inst, theta)
  return finish(inst, cfg.coef * (inst.data - pi))


def sft_estimate(inst, theta, theta_old, cfg: SFTConfig, draws: Draws):
  del theta_old
  _, pi = policy(inst, theta)
  g = jax.vmap(lambda p, i: score(p, i[None])[0])(pi, draws.demo)
  return finish(inst, cfg.coef * g)


SFT = Recipe("sft", SFTConfig(), sft_field, sft_estimate, lambda cfg: 0,
             "π_ref = π_θ, Â ≡ 1 on y* ~ d: g = d − π")
