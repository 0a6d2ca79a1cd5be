"""Figures of the exact statements: C₁(β) with its bounds (C1), and RL-then-SFT (C3/C4)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..theory.instance import Instance, make_instance, rl_stage_after_sft
from ..theory.objectives import (
  c1,
  expect,
  gibbs_tilt,
  kl_rows,
  policy_log_probs,
  regularized_reward,
  reward,
  rl_support,
  sft_grad,
)
from ..theory.statements.rl_then_sft import DEFAULT_BAND
from ..theory.statements.sft_then_rl import hoeffding_bound, sup_bound

__all__ = ["c1_against_beta", "rl_then_sft_reward_change", "example_instance", "sft_path",
           "FIGURES"]


def example_instance(beta: float = 0.5) -> Instance:
  """A fixed 3-prompt, 4-response instance with a non-constant reward on supp d."""
  data = [[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.4, 0.4], [0.25, 0.25, 0.25, 0.25]]
  reward = [[1.0, 0.2, -0.5, 0.8], [-1.0, 0.5, 0.3, 0.9], [0.0, 1.0, -1.0, 0.5]]
  reference = [[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]]
  return make_instance([0.3, 0.3, 0.4], data, reward, beta, reference=reference,
                       dtype=jnp.float64)


def c1_against_beta(inst: Instance | None = None, betas=None) -> Figure:
  """C₁(β) (Theorem 3.1, ρ = d) on log axes with the Hoeffding and sup bounds and both asymptotes.

  Args:
    inst: instance (its reference is replaced by d: SFT-then-RL); default: ``example_instance``.
    betas: [K] values of β (default: 1e-3 to 1e3).

  Returns:
    The figure.
  """
  inst = rl_stage_after_sft(example_instance() if inst is None else inst)
  betas = np.logspace(-3, 3, 121) if betas is None else np.asarray(betas)
  at = jax.vmap(lambda b: dataclasses.replace(inst, beta=b))(jnp.asarray(betas))
  value = np.asarray(jax.vmap(c1)(at))
  hoeff = np.asarray(jax.vmap(hoeffding_bound)(at))
  sup = np.asarray(jax.vmap(sup_bound)(at))
  d, r = np.asarray(inst.data), np.asarray(inst.reward)
  w = np.asarray(inst.prompt_weights)
  mean = (d * r).sum(1)
  var = w @ ((d * r ** 2).sum(1) - mean ** 2)
  top = w @ (np.where(d > 0, r, -np.inf).max(1) - mean)

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.loglog(betas, value, lw=2.4, color="k", label=r"$C_1(\beta)$ = L($\pi^*_\beta$) − L(d)")
  ax.loglog(betas, hoeff, "--", color="tab:blue",
            label=r"Hoeffding: $E_w(\max r-\min r)^2/(8\beta^2)$")
  ax.loglog(betas, sup, "--", color="tab:orange", label=r"sup: $E_w[\max r - E_d r]/\beta$")
  ax.loglog(betas, 0.5 * var / betas ** 2, ":", color="tab:green",
            label=r"$\beta\to\infty$: $\frac{1}{2}E_w \mathrm{Var}_d(r)/\beta^2$")
  ax.loglog(betas, top / betas, ":", color="tab:red",
            label=r"$\beta\to 0$: $E_w[\max r - E_d r]/\beta$")
  ax.set_xlabel(r"KL coefficient $\beta$")
  ax.set_ylabel("SFT-loss increase after exact RL (nats)")
  ax.set_ylim(max(value.min() * 0.3, 1e-12), value.max() * 30)
  ax.set_title("Theorem 3.1 (paper): RL after optimal SFT raises the SFT loss by $C_1(\\beta)$\n"
               "bounds and asymptotes: this project's", fontsize=10)
  ax.grid(True, which="both", alpha=0.25)
  ax.legend(fontsize=8, loc="lower left")
  fig.tight_layout()
  return fig


def sft_path(inst: Instance, steps: int = 400, lr: float = 2.0) -> jax.Array:
  """[steps + 1, X, Y] log-policies of SFT gradient descent in logits started at π₁ = π*_β(ρ).

  Per-prompt step lr / w_x (so every prompt moves at the same pace), as SFT after RL does.
  """
  support = rl_support(inst)
  theta0 = jnp.where(support, gibbs_tilt(inst), 0.0)
  scale = lr / jnp.where(inst.prompt_weights > 0, inst.prompt_weights, 1.0)[:, None]

  def step(theta, _):
    theta = theta - scale * sft_grad(inst, theta)
    return theta, policy_log_probs(inst, theta)

  _, path = jax.lax.scan(step, theta0, None, length=steps)
  return jnp.concatenate([policy_log_probs(inst, theta0)[None], path])


def _rl_then_sft_curves(inst: Instance, steps: int):
  log_pi1 = gibbs_tilt(inst)
  path = sft_path(inst, steps)
  kl = jax.vmap(lambda lp: expect(inst, kl_rows(lp, log_pi1)))(path)
  dj = jax.vmap(lambda lp: reward(inst, lp))(path) - reward(inst, log_pi1)
  djb = (jax.vmap(lambda lp: regularized_reward(inst, lp))(path)
         - regularized_reward(inst, log_pi1))
  return np.asarray(kl), np.asarray(dj), np.asarray(djb)


def rl_then_sft_reward_change(instances: list[Instance] | None = None, steps: int = 300,
                              band=DEFAULT_BAND) -> Figure:
  """RL-then-SFT: raw and regularised reward change against the KL shift E_w KL(π₂‖π₁).

  π₁ = π*_β(ρ) (exact RL), π₂ along SFT gradient descent from π₁ towards d. Left: the raw reward
  J — the printed Theorem 4.1 claims a drop of at least C₂ > 0 for every π₂ in the KL band, and
  the curves that stay at or above 0 inside the band refute it. Right: the regularised objective
  J_β drops by exactly β·KL (this project's repaired Theorem 4.1, C4).
  """
  if instances is None:
    tied = make_instance([1.0], [[0.75, 0.25]], [[0.3, 0.3]], 1.0, reference=[[0.5, 0.5]],
                         dtype=jnp.float64)
    up = make_instance([0.5, 0.5], [[0.1, 0.9, 0.0], [0.2, 0.2, 0.6]],
                       [[0.0, 1.0, 0.2], [1.0, -0.5, 0.8]], 2.0,
                       reference=[[0.6, 0.2, 0.2], [0.5, 0.3, 0.2]], dtype=jnp.float64)
    instances = [example_instance(0.5), example_instance(0.1), tied, up]
    labels = ["3×4 instance, β = 0.5", "3×4 instance, β = 0.1", "tied reward (r constant)",
              "data on high reward, β = 2"]
  else:
    labels = [f"instance {i}" for i in range(len(instances))]
  fig, (ax_raw, ax_reg) = plt.subplots(1, 2, figsize=(11, 4.4))
  colors = plt.cm.viridis(np.linspace(0, 0.85, len(instances)))
  for inst, label, color in zip(instances, labels, colors):
    kl, dj, djb = _rl_then_sft_curves(inst, steps)
    ax_raw.plot(kl, dj, color=color, lw=2, label=label)
    ax_reg.plot(kl, djb, color=color, lw=2, label=label)
    ax_reg.plot(kl, -float(inst.beta) * kl, ":", color="k", lw=1)
  for ax in (ax_raw, ax_reg):
    ax.axvspan(*band, color="tab:red", alpha=0.06)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(r"KL shift $E_w\,\mathrm{KL}(\pi_2\|\pi_1)$ (SFT after exact RL)")
    ax.grid(alpha=0.25)
  ax_raw.set_ylabel(r"raw reward change $J(\pi_2) - J(\pi_1)$")
  ax_raw.set_title("Theorem 4.1 as printed (paper) claims < 0 in the band:\n"
                   "curves at or above 0 are counterexamples", fontsize=10)
  ax_reg.set_ylabel(r"regularised change $J_\beta(\pi_2) - J_\beta(\pi_1)$")
  ax_reg.set_title(r"repaired (this project's C4): exactly $-\beta\,$KL (dotted)", fontsize=10)
  ax_raw.legend(fontsize=8)
  fig.tight_layout()
  return fig


FIGURES = {
    "c1_against_beta": c1_against_beta,
    "rl_then_sft_reward_change": rl_then_sft_reward_change,
}
