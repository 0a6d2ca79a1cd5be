"""Figures of the training dynamics: flows, pipelines, PL decay, gradient cosine, shared parameters.

Each function takes explicit inputs and returns a Figure; ``FIGURES`` maps names to zero-argument
versions on built-in deterministic inputs (each takes a few seconds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ..theory import flows, gold_task, objectives as obj
from ..theory.instance import make_instance
from ..theory.statements import pl

__all__ = ["FIGURES", "demo_instance", "sft_loss_along_rl", "reward_along_sft", "pl_decay_figure",
           "grad_cosine_figure", "c1_zero_held_out"]


def demo_instance():
  """A fixed 4 × 5 instance with a dense base policy ρ ≠ d (float64 if enabled)."""
  rng = np.random.default_rng(3)
  d = rng.dirichlet(np.ones(5), 4)
  ref = rng.dirichlet(np.ones(5) * 3, 4)
  r = rng.uniform(-1, 1, (4, 5))
  return make_instance(np.ones(4) / 4, d, r, 0.3, reference=ref)


def _gold(family):
  return gold_task.gold_label_task(jax.random.PRNGKey(0), family=family)


def sft_loss_along_rl(inst=None, task=None) -> plt.Figure:
  """The paper's Fig. 3a in exact form: SFT loss along RL after SFT, with the base-model level.

  Left: tabular flows (SFT 5u from ρ, then RL 5u with the SFT policy as reference). Right: a
  shared-parameter head on gold-label ±1 data (C₁ = 0), train and held-out prompts.
  """
  inst = demo_instance() if inst is None else inst
  task = _gold("gaussian") if task is None else task
  tr = flows.run_flow(inst, flows.pipeline_schedule("sft_then_rl", inst), n_save=24)
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  t = np.asarray(tr.times)
  a.plot(t, np.asarray(tr.sft_loss), label="SFT loss L")
  a.axhline(float(obj.sft_loss(inst, obj.safe_log(inst.reference))), color="gray", ls="--",
            label="base model ρ")
  a.axhline(float(obj.sft_optimum_loss(inst)), color="k", ls=":", label="L(d)")
  a.axvline(float(t[len(t) // 2]), color="C3", lw=0.8, label="RL starts")
  a.set(xlabel="flow time", ylabel="SFT loss (nats)", title="tabular: SFT then RL (exact flows)")
  a.legend(fontsize=8)
  res = gold_task.run_pipeline(task, "sft_then_rl")
  s_sft, s_rl = np.asarray(res["sft"]["step"]), np.asarray(res["rl"]["step"])
  off = s_sft[-1]
  for split, c in (("train", "C0"), ("held_out", "C1")):
    b.plot(s_sft, np.asarray(res["sft"][f"sft_loss_{split}"]), c=c, label=split)
    b.plot(off + s_rl, np.asarray(res["rl"][f"sft_loss_{split}"]), c=c)
  b.axhline(float(res["base_sft_loss_held_out"]), color="gray", ls="--", label="base (held-out)")
  b.axvline(float(off), color="C3", lw=0.8, label="RL starts")
  b.set(xlabel="Adam step", ylabel="SFT loss (nats)",
        title="shared parameters, gold ±1 data (C₁ = 0)")
  b.legend(fontsize=8)
  fig.tight_layout()
  return fig


def reward_along_sft(inst=None, task=None) -> plt.Figure:
  """The paper's Fig. 3b in exact form: reward along SFT after RL, with the base-model level."""
  inst = demo_instance() if inst is None else inst
  task = _gold("gaussian") if task is None else task
  tr = flows.run_flow(inst, flows.pipeline_schedule("rl_then_sft", inst), n_save=24)
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  t = np.asarray(tr.times)
  a.plot(t, np.asarray(tr.reward), label="reward J")
  a.axhline(float(obj.reward(inst, obj.safe_log(inst.reference))), color="gray", ls="--",
            label="base model ρ")
  a.axvline(float(t[len(t) // 2]), color="C3", lw=0.8, label="SFT starts")
  a.set(xlabel="flow time", ylabel="reward", title="tabular: RL then SFT (exact flows)")
  a.legend(fontsize=8)
  res = gold_task.run_pipeline(task, "rl_then_sft")
  s_rl, s_sft = np.asarray(res["rl"]["step"]), np.asarray(res["sft"]["step"])
  off = s_rl[-1]
  for split, c in (("train", "C0"), ("held_out", "C1")):
    b.plot(s_rl, np.asarray(res["rl"][f"reward_{split}"]), c=c, label=split)
    b.plot(off + s_sft, np.asarray(res["sft"][f"reward_{split}"]), c=c)
  b.axhline(float(res["base_reward_held_out"]), color="gray", ls="--", label="base (held-out)")
  b.axvline(float(off), color="C3", lw=0.8, label="SFT starts")
  b.set(xlabel="Adam step", ylabel="reward", title="shared parameters, gold ±1 data")
  b.legend(fontsize=8)
  fig.tight_layout()
  return fig


def pl_decay_figure(inst=None) -> plt.Figure:
  """This project's D5: gap against its PL bound gap(0)exp(−2∫μ) along RL and SFT flows."""
  inst = demo_instance() if inst is None else inst
  theta0 = 1.5 * jax.random.normal(jax.random.PRNGKey(0), inst.data.shape, inst.data.dtype)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, kind in zip(axes, ("rl", "sft")):
    unit = float(flows.time_unit(inst))
    ts = jnp.linspace(0.05, 20.0, 60) * unit
    res = pl.pl_decay(inst, ts, theta0, kind=kind)
    ax.semilogy(ts, np.asarray(res["gap"]), label="gap (integrated flow)")
    ax.semilogy(ts, np.asarray(res["bound"]), ls="--", label="PL bound gap(0)e^{−2∫μ}")
    ax2 = ax.twinx()
    ax2.semilogy(ts, np.asarray(res["ratio"]), c="C2", lw=0.8, label="PL ratio ‖∇‖²/(2μ gap)")
    ax2.set_ylabel("PL ratio (≥ 1)", color="C2")
    name = "RL: J_β* − J_β" if kind == "rl" else "SFT: L − L(d)"
    ax.set(xlabel="flow time", ylabel="gap", title=f"this project's D5, {name}")
    ax.legend(fontsize=8, loc="lower left")
  fig.tight_layout()
  return fig


def grad_cosine_figure(inst=None) -> plt.Figure:
  """cos∠(∇L, ∇J_β) along each pipeline (this project's D6 context)."""
  inst = demo_instance() if inst is None else inst
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for name in flows.PIPELINE_NAMES:
    tr = flows.run_flow(inst, flows.pipeline_schedule(name, inst), n_save=16)
    ax.plot(np.asarray(tr.times), np.asarray(tr.grad_cosine), label=name)
  ax.axhline(0, color="gray", lw=0.6)
  ax.set(xlabel="flow time", ylabel="cos∠(∇L, ∇J_β)", title="gradient alignment along pipelines")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def c1_zero_held_out(key=None) -> plt.Figure:
  """C₁ = 0 (tabular, Theorem 3.1: no SFT-loss increase) beside the shared-parameter held-out
  rise."""
  key = jax.random.PRNGKey(0) if key is None else key
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for ax, fam, title in ((axes[0], "one_hot", "tabular (one-hot features): C₁ = 0"),
                         (axes[1], "gaussian", "shared parameters (Gaussian features)")):
    task = gold_task.gold_label_task(key, family=fam)
    res = gold_task.run_pipeline(task, "sft_then_rl")
    s = np.asarray(res["rl"]["step"])
    for split, c in (("train", "C0"), ("held_out", "C1")):
      ax.plot(s, np.asarray(res["rl"][f"sft_loss_{split}"]), c=c, label=f"{split} SFT loss")
    ax.axhline(float(res["base_sft_loss_held_out"]), color="gray", ls="--",
               label="base (held-out)")
    ax.set(xlabel="RL step after SFT", title=title)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("SFT loss (nats)")
  fig.tight_layout()
  return fig


FIGURES = {
    "dynamics_fig3a_sft_loss_along_rl": sft_loss_along_rl,
    "dynamics_fig3b_reward_along_sft": reward_along_sft,
    "dynamics_pl_decay": pl_decay_figure,
    "dynamics_grad_cosine": grad_cosine_figure,
    "dynamics_c1_zero_held_out": c1_zero_held_out,
}
