"""Every quantity `check` reports for one instance, as one pure (jit/vmap-able) function."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from theory import ours, paper
from theory.instance import Instance
from theory.objectives import (
    c1, expect, gibbs_tilt, kl_rows, log_partition, regularized_reward, reward, rl_value, safe_log,
    sft_loss, sft_optimum_loss,
)

__all__ = ["check_quantities", "QUANTITY_DOCS"]

QUANTITY_DOCS = {
    "sft_loss_data": "L(d) = E_w H(d_x), the SFT optimum",
    "sft_loss_reference": "L(ρ)",
    "sft_loss_rl": "L(π*_β), π*_β the Gibbs tilt of ρ",
    "c1": "C₁(β; ρ) = L(π*_β) − L(ρ)",
    "c1_sft_then_rl": "C₁(β) with ρ = d (Theorem 3.1)",
    "rl_value": "J_β(π*_β) = β E_w log Z_β",
    "reward_reference": "J(ρ)",
    "reward_rl": "J(π*_β)",
    "reward_data": "J(d)",
    "regularized_reward_data": "J_β(d; ρ)",
    "kl_rl_reference": "E_w KL(π*_β ‖ ρ)",
    "kl_data_rl": "E_w KL(d ‖ π*_β)",
    "hoeffding_bound": "E_w (max r − min r)²/(8β²), ranges over supp d",
    "sup_bound": "E_w [max r − E_d r]/β over supp d",
    "joint_tv": "E_w TV(d, π*_β)",
    "beta_critical": "β_c with C₁(β_c; ρ) = 0 (this project's D1; null when none)",
    "initial_slope": "dL/dt at t=0 along the RL flow from ρ (this project's D2)",
    "initial_curvature": "d²L/dt² at t=0 along RL from ρ = d (this project's D2)",
}


def check_quantities(inst: Instance) -> dict[str, jax.Array]:
  """All scalar quantities of one instance (unbatched; vmap for batches).

  Returns:
    dict name -> [] array, names as in ``QUANTITY_DOCS``.
  """
  log_rl = gibbs_tilt(inst)
  log_rho = safe_log(inst.reference)
  log_d = safe_log(inst.data)
  sr = paper.sft_then_rl(inst)
  return {
      "sft_loss_data": sft_optimum_loss(inst),
      "sft_loss_reference": sft_loss(inst, log_rho),
      "sft_loss_rl": sft_loss(inst, log_rl),
      "c1": c1(inst),
      "c1_sft_then_rl": c1(sr),
      "rl_value": rl_value(inst),
      "reward_reference": reward(inst, log_rho),
      "reward_rl": reward(inst, log_rl),
      "reward_data": reward(inst, log_d),
      "regularized_reward_data": regularized_reward(inst, log_d),
      "kl_rl_reference": expect(inst, kl_rows(log_rl, log_rho)),
      "kl_data_rl": expect(inst, kl_rows(log_d, log_rl)),
      "hoeffding_bound": paper.hoeffding_bound(inst),
      "sup_bound": paper.sup_bound(inst),
      "joint_tv": ours.joint_tv(inst),
      "beta_critical": ours.beta_critical(inst),
      "initial_slope": ours.initial_slope(inst),
      "initial_curvature": ours.initial_curvature(inst),
  }
