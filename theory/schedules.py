r"""Pipeline schedules: phases of SFT and RL flows (or optimiser steps) and their default lengths.

A pipeline is a :class:`Schedule` of phases; phase p follows θ̇ = −a_p ∇L + b_p ∇J_β(·; ρ_p) for
``duration[p]``, with ρ_p the instance's reference or, when ``reset_reference[p]``, the policy at
the start of the phase. theory/flows.py integrates schedules as flows (durations in time) and as
optax steps (durations in steps).

Default durations (:func:`pipeline_schedule`) are in units of u = 1 / min_x w_x (the time over which
the slowest prompt's logits move by O(1) under a unit-scale force; u = |X| for uniform weights):
SFT 5u, RL 5u, alternating SFT/RL with period u over 10u, joint 10u with λ = 1.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (SFT-then-RL and RL-then-SFT pipelines).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .instance import Instance

__all__ = ["Schedule", "PIPELINE_NAMES", "time_unit", "sft_only_schedule", "rl_only_schedule",
           "sft_then_rl_schedule", "rl_then_sft_schedule", "alternating_schedule",
           "joint_schedule", "pipeline_schedule"]

PIPELINE_NAMES = ("sft_then_rl", "rl_then_sft", "alternating", "joint")


def _traced(*values) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(values))


def time_unit(inst: Instance) -> jax.Array:
  """u = 1 / min_x w_x over real (weight > 0) prompts: the pipelines' unit of time.

  On concrete weights it is computed on the host (a NumPy scalar: nothing is compiled).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> float(time_unit(make_instance([0.25, 0.75], [[0.5, 0.5]] * 2, [[0.0, 1.0]] * 2, 1.0)))
    4.0
  """
  w = inst.prompt_weights
  if not _traced(w):
    w = np.asarray(w)
    return w.dtype.type(1.0) / np.min(np.where(w > 0, w, np.inf))
  return 1.0 / jnp.min(jnp.where(w > 0, w, jnp.inf))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
  """Phases of a pipeline (arrays [P]; P is static through the shapes).

  Attributes:
    sft_weight: [P] a, weight of −∇L in each phase.
    rl_weight: [P] b, weight of ∇J_β in each phase.
    duration: [P] length of each phase (time for flows, steps for optimiser runs), > 0.
    reset_reference: [P] bool, True: the RL reference becomes the policy at the phase start.
  """

  sft_weight: jax.Array
  rl_weight: jax.Array
  duration: jax.Array
  reset_reference: jax.Array

  @property
  def n_phases(self) -> int:
    return int(self.duration.shape[-1])


def _schedule(a, b, dur, reset) -> Schedule:
  f = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  if _traced(a, b, dur, reset):
    return Schedule(jnp.asarray(a, f), jnp.asarray(b, f), jnp.asarray(dur, f),
                    jnp.asarray(reset, bool))
  put = lambda v, t: jax.device_put(np.asarray(v, t))  # concrete: built on the host, not compiled
  return Schedule(put(a, f), put(b, f), put(dur, f), put(reset, bool))


def sft_only_schedule(duration) -> Schedule:
  """One SFT phase.

  Examples:
    >>> s = sft_only_schedule(2.0)
    >>> s.sft_weight.tolist(), s.rl_weight.tolist(), s.duration.tolist()
    ([1.0], [0.0], [2.0])
  """
  return _schedule([1.0], [0.0], [duration], [False])


def rl_only_schedule(duration) -> Schedule:
  """One RL phase with the instance's reference.

  Examples:
    >>> s = rl_only_schedule(2.0)
    >>> s.sft_weight.tolist(), s.rl_weight.tolist(), s.reset_reference.tolist()
    ([0.0], [1.0], [False])
  """
  return _schedule([0.0], [1.0], [duration], [False])


def sft_then_rl_schedule(t_sft, t_rl) -> Schedule:
  """SFT from ρ for t_sft, then RL for t_rl with the reference reset to the SFT end policy.

  Examples:
    >>> sft_then_rl_schedule(2.0, 3.0).reset_reference.tolist()
    [False, True]
  """
  return _schedule([1.0, 0.0], [0.0, 1.0], [t_sft, t_rl], [False, True])


def rl_then_sft_schedule(t_rl, t_sft) -> Schedule:
  """RL from ρ (reference ρ) for t_rl, then SFT for t_sft.

  Examples:
    >>> s = rl_then_sft_schedule(1.0, 3.0)
    >>> s.rl_weight.tolist(), s.sft_weight.tolist(), s.duration.tolist()
    ([1.0, 0.0], [0.0, 1.0], [1.0, 3.0])
  """
  return _schedule([0.0, 1.0], [1.0, 0.0], [t_rl, t_sft], [False, False])


def alternating_schedule(period: float, total: float, start: str = "sft") -> Schedule:
  """SFT and RL (reference ρ) alternating every ``period`` until ``total`` (last phase cut).

  The number of phases, ceil(total / period), is static (it fixes the compiled shape).

  Examples:
    >>> alternating_schedule(2.0, 5.0).duration.tolist()
    [2.0, 2.0, 1.0]
  """
  if period <= 0 or total <= 0:
    raise ValueError(f"period and total must be > 0, got {period} and {total}")
  n = max(1, math.ceil(total / period - 1e-12))
  durs = [period] * (n - 1) + [total - period * (n - 1)]
  first = 0 if start == "sft" else 1
  a = [1.0 if (i + first) % 2 == 0 else 0.0 for i in range(n)]
  return _schedule(a, [1.0 - v for v in a], durs, [False] * n)


def joint_schedule(duration, lam=1.0) -> Schedule:
  """One joint phase θ̇ = −∇(L − λJ_β) (reference ρ).

  Examples:
    >>> s = joint_schedule(2.0, lam=0.5)
    >>> s.sft_weight.tolist(), s.rl_weight.tolist()  # θ̇ = −∇L + λ∇J_β
    ([1.0], [0.5])
  """
  return _schedule([1.0], [lam], [duration], [False])


def pipeline_schedule(name: str, inst: Instance) -> Schedule:
  """The documented default schedule of a named pipeline, in units of :func:`time_unit`.

  sft_then_rl: SFT 5u then RL 5u; rl_then_sft: RL 5u then SFT 5u; alternating: period u over
  10u starting with SFT; joint: 10u with λ = 1.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([0.5, 0.5], [[0.5, 0.5]] * 2, [[0.0, 1.0]] * 2, 1.0)
    >>> pipeline_schedule("sft_then_rl", inst).duration.tolist()
    [10.0, 10.0]
  """
  u = float(time_unit(inst))
  if name == "sft_then_rl":
    return sft_then_rl_schedule(5 * u, 5 * u)
  if name == "rl_then_sft":
    return rl_then_sft_schedule(5 * u, 5 * u)
  if name == "alternating":
    return alternating_schedule(u, 10 * u)
  if name == "joint":
    return joint_schedule(10 * u, 1.0)
  raise ValueError(f"unknown pipeline {name!r} (known: {', '.join(PIPELINE_NAMES)})")
