r"""The joint non-decoupling bound (this project's D3; not the paper's).

For every policy π (any reference ρ): √(ΔL(π)/2) + √(ΔJ_β(π)/(2β)) ≥ E_w TV(d_x, π*_x), with
ΔL = L(π) − L(d) = E_w KL(d‖π) (B1) and ΔJ_β = J_β(π*) − J_β(π) = β E_w KL(π‖π*) (B2): Pinsker twice,
the triangle inequality and Jensen. No policy is near-optimal for both objectives unless d is close
to π*.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import (
  expect,
  gibbs_tilt,
  log_partition,
  regularized_reward,
  sft_excess,
  tv_rows,
)
from ..verdict import Verdict, at_least

__all__ = ["joint_gap", "joint_tv", "joint_bound"]



def joint_gap(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """√(ΔL(π)/2) + √(ΔJ_β(π)/(2β)), with ΔL = L(π) − L(d), ΔJ_β = J_β(π*) − J_β(π)."""
  d_l = jnp.maximum(sft_excess(inst, log_pi), 0.0)
  d_j = jnp.maximum(inst.beta * expect(inst, log_partition(inst))
                    - regularized_reward(inst, log_pi), 0.0)
  return jnp.sqrt(d_l / 2.0) + jnp.sqrt(d_j / (2.0 * inst.beta))


def joint_tv(inst: Instance) -> jax.Array:
  """E_w TV(d_x, π*_x)."""
  return expect(inst, tv_rows(inst.data, jnp.exp(gibbs_tilt(inst))))


def joint_bound(inst: Instance, log_pi: jax.Array) -> Verdict:
  """D3 (ours): √(ΔL/2) + √(ΔJ_β/(2β)) ≥ E_w TV(d, π*) for every policy π (any ρ)."""
  return at_least(joint_gap(inst, log_pi), joint_tv(inst))
