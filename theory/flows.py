r"""Gradient flows and optimiser steps in logits for SFT, RL and their pipelines (THEORY.md E).

Flows are Euclidean gradient flows of the population objectives for the tabular softmax policy
π = softmax(θ), all of the form θ̇ = −a ∇L + b ∇J_β(·; ρ) (theory/logit_field.py):

- SFT:   θ̇ = −∇L(θ)                  (a, b) = (1, 0)
- RL:    θ̇ = ∇J_β(θ; ρ), ρ fixed      (a, b) = (0, 1)
- joint: θ̇ = −∇(L − λ J_β)(θ)        (a, b) = (1, λ)

One flow is integrated by theory/logit_flow.py (:func:`flow`, :func:`flow_solution`, re-exported
here): explicit Dormand–Prince 5(4) where the flow is not stiff, the L-stable Rosenbrock method
Rodas5P with per-prompt O(|Y|) linear solves where it is (large β, large rewards, very unequal
prompt weights), so every flow is right over the whole valid domain, and a solve that runs out of
steps says so (``ok`` False, NaN) instead of returning numbers.

A pipeline is a :class:`~.schedules.Schedule` of phases, integrated phase by phase inside one
``lax.scan``, so the same compiled function runs every pipeline of the same number of phases, and
``jax.vmap`` batches it over instances padded to one shape. :func:`.optimizer_steps.run_steps`
runs the same schedules as discrete optax steps (SGD or Adam), the way a trainer does.

Every run returns a :class:`Trajectory` of L, J, J_β (against the instance's own ρ and β),
E_w KL(d‖π), E_w KL(π‖ρ), the two gradient norms and cos∠(∇L, ∇J_β) (the RL gradient against the
reference the pipeline's RL phase follows there), plus per-phase solver statistics.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (SFT-then-RL and RL-then-SFT pipelines).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import objectives as obj
from .instance import Instance, rl_stage_after_sft
from .logit_field import logit_system, natural_time, stiffness_rate, vector_field
from .logit_flow import (
  DEFAULT_MAX_STEPS,
  EXPLICIT_LIMIT,
  METHODS,
  FlowSolution,
  flow,
  flow_solution,
  integrate,
  resolve_method,
  rl_flow,
  sft_flow,
  solve_logit_system,
)
from .objectives import initial_logits
from .schedules import (
  PIPELINE_NAMES,
  Schedule,
  alternating_schedule,
  joint_schedule,
  pipeline_schedule,
  rl_only_schedule,
  rl_then_sft_schedule,
  sft_only_schedule,
  sft_then_rl_schedule,
  time_unit,
)
from .trajectory import (
  GRAD_COSINE_RTOL,
  Trajectory,
  assemble_trajectory,
  gradient_scales,
  phase_instance,
  schedule_phases,
  trajectory_metrics,
)

__all__ = [
    "Schedule", "Trajectory", "FlowSolution", "PIPELINE_NAMES", "METHODS", "EXPLICIT_LIMIT",
    "DEFAULT_MAX_STEPS", "GRAD_COSINE_RTOL", "time_unit", "natural_time", "stiffness_rate",
    "vector_field", "integrate", "flow_solution", "flow", "sft_flow", "rl_flow",
    "gradient_scales", "trajectory_metrics", "sft_only_schedule", "rl_only_schedule",
    "sft_then_rl_schedule", "rl_then_sft_schedule", "alternating_schedule", "joint_schedule",
    "pipeline_schedule", "run_flow", "flow_trajectory", "run_pipeline", "sft_then_rl_endpoint",
]


def sft_then_rl_endpoint(inst: Instance) -> jax.Array:
  """log π*_β(d): the exact end point of SFT-then-RL (Gibbs tilt of the data, instance's β).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # π*_β(d) = (1, e)/(1 + e)
    >>> [round(v, 6) for v in jnp.exp(sft_then_rl_endpoint(inst))[0].tolist()]
    [0.268941, 0.731059]
  """
  return obj.gibbs_tilt(rl_stage_after_sft(inst))


def run_flow(inst: Instance, schedule: Schedule, theta0: jax.Array | None = None, *,
             n_save: int = 16, rtol: float = 1e-8, atol: float = 1e-10,
             max_steps: int = DEFAULT_MAX_STEPS, method: str = "auto") -> Trajectory:
  r"""Integrates a pipeline's flows phase by phase and returns its trajectory.

  Phase p runs θ̇ = −a_p ∇L + b_p ∇J_β(·; ρ_p) for ``duration[p]``, where ρ_p is the instance's ρ
  or, if ``reset_reference[p]``, the policy at the start of the phase (kept for later phases).
  Each phase picks its solver (module docstring) and has its own step budget; a phase that does
  not reach its end makes ``ok`` False and every later point NaN.

  Args:
    inst: instance (unbatched; vmap for batches of one padded shape).
    schedule: the phases (see :func:`~.schedules.sft_then_rl_schedule` etc.).
    theta0: [X, Y] initial logits (default log ρ).
    n_save: points saved per phase, evenly spaced in time.
    rtol, atol, max_steps, method: solver settings (:func:`flow_solution`).

  Returns:
    :class:`Trajectory` with T = 1 + P · n_save points.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.schedules import sft_then_rl_schedule
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.9, 0.1]])
    >>> tr = run_flow(inst, sft_then_rl_schedule(40.0, 60.0), n_save=2)
    >>> bool(tr.ok), [round(float(v), 4) for v in jnp.exp(tr.final_log_pi[0])]  # ≈ π*_β(d)
    (True, [0.2689, 0.7311])
  """
  method = resolve_method(method, inst, schedule.duration, schedule.sft_weight,
                           schedule.rl_weight)
  return _run_flow(inst, schedule, theta0, rtol, atol, max_steps, n_save=n_save, method=method)


def flow_trajectory(inst: Instance, schedule: Schedule, theta0: jax.Array | None, rtol, atol,
                    max_steps, n_save: int, method: str) -> Trajectory:
  """:func:`run_flow` with its solver already chosen, as one traceable function of arrays.

  What :func:`run_flow` jit-compiles (``n_save`` and ``method`` static): callers that keep
  compiled programs between processes compile this with their own ``jit``.

  Args:
    inst, schedule, theta0: as :func:`run_flow`.
    rtol, atol, max_steps: solver settings (traced scalars).
    n_save: points saved per phase.
    method: "explicit", "implicit" or "auto" (:func:`~.logit_flow.resolve_method`).

  Returns:
    :class:`Trajectory` with T = 1 + P · n_save points.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.schedules import sft_only_schedule
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.9, 0.1]])
    >>> tr = jax.jit(flow_trajectory, static_argnums=(6, 7))(
    ...     inst, sft_only_schedule(40.0), None, 1e-8, 1e-10, 1000, 1, "explicit")
    >>> [round(float(v), 4) for v in jnp.exp(tr.final_log_pi[0])]  # SFT → d
    [0.5, 0.5]
  """
  theta0 = initial_logits(inst) if theta0 is None else theta0
  dtype = theta0.dtype
  frac = jnp.arange(1, n_save + 1, dtype=dtype) / n_save
  mean0 = logit_system(inst, 0.0, 1.0).row_mean(theta0)  # conserved by every phase's flow

  def phase_step(carry, ph):
    theta, reference, t_start = carry
    a, b, dur, reset = ph
    reference, inst_p = phase_instance(inst, reference, theta, reset)
    system = logit_system(inst_p, a, b)
    ts = dur * frac
    sol, stiff = solve_logit_system(system, system.to_internal(theta), ts,
                                    stiffness_rate(inst_p, a, b), mean0, rtol=rtol, atol=atol,
                                    max_steps=max_steps, method=method)
    stats = dict(phase_ok=sol.ok, reached=sol.t, steps=sol.accepted, rejected=sol.rejected,
                 stiff=stiff)
    return (sol.ys[-1], reference, t_start + dur), (sol.ys, reference, t_start + ts, stats)

  _, (thetas, refs, times, stats) = jax.lax.scan(
      phase_step, (theta0, inst.reference, jnp.zeros((), dtype)), schedule_phases(schedule, dtype))
  times = jnp.concatenate([jnp.zeros((1,), dtype), times.reshape(-1)])
  return assemble_trajectory(inst, theta0, thetas, refs, times, stats, n_save)


_run_flow = jax.jit(flow_trajectory, static_argnames=("n_save", "method"))

def run_pipeline(inst: Instance, name: str, *, n_save: int = 16, rtol: float = 1e-8,
                 atol: float = 1e-10, max_steps: int = DEFAULT_MAX_STEPS) -> Trajectory:
  """Runs the named pipeline (:data:`PIPELINE_NAMES`) with its default schedule as a flow.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> tr = run_pipeline(inst, "sft_then_rl", n_save=4)
    >>> # from log 2 towards log 2 + C₁ = 0.8133
    >>> round(float(tr.sft_loss[0]), 4), round(float(tr.sft_loss[-1]), 4)
    (0.6931, 0.79)
  """
  return run_flow(inst, pipeline_schedule(name, inst), n_save=n_save, rtol=rtol, atol=atol,
                  max_steps=max_steps)
