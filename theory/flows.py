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
``jax.vmap`` batches it over instances padded to one shape. :func:`run_steps` runs the same
schedules as discrete optax steps (SGD or Adam), the way a trainer does.

Every run returns a :class:`Trajectory` of L, J, J_β (against the instance's own ρ and β),
E_w KL(d‖π), E_w KL(π‖ρ), the two gradient norms and cos∠(∇L, ∇J_β) (the RL gradient against the
reference the pipeline's RL phase follows there), plus per-phase solver statistics.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (SFT-then-RL and RL-then-SFT pipelines).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from . import objectives as obj
from .instance import Instance, rl_stage_after_sft, with_reference
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
from .objectives import initial_logits, logits_of
from .optimizers import make_optimizer
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

__all__ = [
    "Schedule", "Trajectory", "FlowSolution", "PIPELINE_NAMES", "METHODS", "EXPLICIT_LIMIT",
    "DEFAULT_MAX_STEPS", "GRAD_COSINE_RTOL", "time_unit", "natural_time", "stiffness_rate",
    "vector_field", "integrate", "flow_solution", "flow", "sft_flow", "rl_flow",
    "gradient_scales", "trajectory_metrics", "sft_only_schedule", "rl_only_schedule",
    "sft_then_rl_schedule", "rl_then_sft_schedule", "alternating_schedule", "joint_schedule",
    "pipeline_schedule", "run_flow", "run_steps", "run_pipeline", "sft_then_rl_endpoint",
]

# cos∠(∇L, ∇J_β) is reported (not NaN) only when both gradients exceed this fraction of their
# natural scales (:func:`gradient_scales`): below it they are within ~1e7 roundings of 0.
GRAD_COSINE_RTOL = 1e-9


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



# ----------------------------------------------------------------------------- trajectories

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
  """A pipeline run sampled at T points (T = 1 + P · n_save; leading batch axes under vmap).

  Attributes:
    times: [T] time (flows) or step count (optax) since the start.
    phase: [T] int index of the phase each point belongs to (0 for the start point).
    log_pi: [T, X, Y] policy log-probabilities (NaN after a failed solve).
    sft_loss, reward, regularized_reward: [T] L, J and J_β (instance ρ and β).
    kl_data: [T] E_w KL(d_x ‖ π_x) = L − L(d).
    kl_reference: [T] E_w KL(π_x ‖ ρ_x) (instance ρ).
    sft_grad_norm, rl_grad_norm: [T] ‖∇L‖ and ‖∇J_β‖ (RL gradient against the phase reference).
    grad_cosine: [T] cos∠(∇L, ∇J_β); NaN where it is undefined: where either gradient is below
      ``GRAD_COSINE_RTOL`` times its natural scale (:func:`trajectory_metrics`).
    sft_grad_scale, rl_grad_scale: [T] those natural scales (:func:`gradient_scales`).
    ok: [] bool, every phase reached its end.
    phase_ok: [P] bool, each phase reached its end.
    reached: [P] time (or steps) each phase ran for.
    steps, rejected: [P] int32 accepted and rejected solver steps (optimiser steps, 0).
    stiff: [P] bool, the phase used the implicit solver.
  """

  times: jax.Array
  phase: jax.Array
  log_pi: jax.Array
  sft_loss: jax.Array
  reward: jax.Array
  regularized_reward: jax.Array
  kl_data: jax.Array
  kl_reference: jax.Array
  sft_grad_norm: jax.Array
  rl_grad_norm: jax.Array
  grad_cosine: jax.Array
  sft_grad_scale: jax.Array
  rl_grad_scale: jax.Array
  ok: jax.Array
  phase_ok: jax.Array
  reached: jax.Array
  steps: jax.Array
  rejected: jax.Array
  stiff: jax.Array

  @property
  def final_log_pi(self) -> jax.Array:
    return self.log_pi[..., -1, :, :]


def gradient_scales(inst: Instance, rl_reference: jax.Array):
  r"""Natural scales (s_L, s_J) of ‖∇L‖ and ‖∇J_β‖ (their rounding floors are ~1e-16 of these).

  s_L = (Σ_x w_x²)^½ (|π_x − d_x| ≤ 1); s_J = s_L (max_S |r| + β (1 + max_S |log ρ|)), the size of
  the terms w π (r − β log(π/ρ)) the RL gradient is computed from (π |log π| ≤ 1/e).

  Args:
    inst: instance (prompt weights, reward, β).
    rl_reference: [X, Y] the RL reference the gradient is taken against.

  Returns:
    (s_L [], s_J []).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 2.0]], 1.0)
    >>> [round(float(v), 4) for v in gradient_scales(inst, inst.reference)]  # 1, 2 + 1·(1 + log 2)
    [1.0, 3.6931]
  """
  support = inst.response_mask & (rl_reference > 0)
  w = inst.prompt_weights
  s_l = jnp.sqrt(jnp.sum(jnp.where(w > 0, w * w, 0.0)))
  r_max = jnp.max(jnp.where(support, jnp.abs(inst.reward), 0.0))
  log_rho = jnp.max(jnp.where(support, jnp.abs(jnp.log(jnp.where(support, rl_reference, 1.0))),
                              0.0))
  return s_l, s_l * (r_max + inst.beta * (1.0 + log_rho))


def _point_metrics(inst: Instance, log_pi: jax.Array, rl_reference: jax.Array) -> dict:
  theta = logits_of(inst, log_pi)
  g_sft = obj.sft_grad(inst, theta)
  g_rl = obj.rl_grad(with_reference(inst, rl_reference), theta)
  n_sft = jnp.sqrt(jnp.sum(g_sft ** 2))
  n_rl = jnp.sqrt(jnp.sum(g_rl ** 2))
  s_l, s_j = gradient_scales(inst, rl_reference)
  defined = (n_sft > GRAD_COSINE_RTOL * s_l) & (n_rl > GRAD_COSINE_RTOL * s_j)
  denom = jnp.where(defined, n_sft * n_rl, 1.0)
  cos = jnp.where(defined, jnp.sum(g_sft * g_rl) / denom, jnp.nan)
  return dict(
      sft_loss=obj.sft_loss(inst, log_pi),
      reward=obj.reward(inst, log_pi),
      regularized_reward=obj.regularized_reward(inst, log_pi),
      kl_data=obj.sft_excess(inst, log_pi),
      kl_reference=obj.expect(inst, obj.kl_rows(log_pi, obj.safe_log(inst.reference))),
      sft_grad_norm=n_sft, rl_grad_norm=n_rl, grad_cosine=cos, sft_grad_scale=s_l,
      rl_grad_scale=s_j)


def trajectory_metrics(inst: Instance, log_pis: jax.Array, rl_references: jax.Array | None = None
                       ) -> dict:
  r"""Metrics of :class:`Trajectory` at policies ``log_pis`` [T, X, Y] (dict of [T] arrays).

  ``rl_references`` [T, X, Y] are the RL references for the RL gradient (default: instance ρ).
  cos∠(∇L, ∇J_β) is NaN unless ‖∇L‖ > τ s_L and ‖∇J_β‖ > τ s_J with τ = ``GRAD_COSINE_RTOL``,
  s_L = (Σ_x w_x²)^½ and s_J = s_L (max |r| + β (1 + max |log ρ|)) over the RL support: the
  gradients' rounding errors are ~1e-16 of these scales, so a smaller gradient has no direction.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> m = trajectory_metrics(inst, jnp.log(inst.data)[None])  # at π = d: ∇L = 0
    >>> float(m["sft_grad_norm"][0]), bool(jnp.isnan(m["grad_cosine"][0]))
    (0.0, True)
  """
  if rl_references is None:
    rl_references = jnp.broadcast_to(inst.reference, log_pis.shape)
  return jax.vmap(_point_metrics, in_axes=(None, 0, 0))(inst, log_pis, rl_references)


def _policy(inst, theta):
  return obj.policy_log_probs(inst, theta)


def _phase_instance(inst, reference, theta, reset):
  """(reference, instance) of a phase: a phase that resets takes the current policy as ρ."""
  reference = jnp.where(reset, jnp.exp(_policy(inst, theta)), reference)
  return reference, with_reference(inst, reference)


def _assemble(inst, theta0, thetas, refs, times, stats, n_save) -> Trajectory:
  """Joins the start point and the per-phase saves ([P, n_save, X, Y]) into a trajectory."""
  n_phases = thetas.shape[0]
  shape = thetas.shape[-2:]
  thetas = jnp.concatenate([theta0[None], thetas.reshape((-1,) + shape)])
  ref_points = jnp.concatenate([refs[:1], jnp.repeat(refs, n_save, axis=0)])
  log_pis = jax.vmap(lambda th: _policy(inst, th))(thetas)
  metrics = trajectory_metrics(inst, log_pis, ref_points)
  # A point the solver did not reach is NaN in every metric (the objectives' masked sums would
  # otherwise turn NaN probabilities into zeros).
  reached = jnp.all(jnp.isfinite(thetas), axis=(-2, -1))
  metrics = {k: jnp.where(reached, v, jnp.nan) for k, v in metrics.items()}
  phase = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                           jnp.repeat(jnp.arange(n_phases, dtype=jnp.int32), n_save)])
  return Trajectory(times=times, phase=phase, log_pi=log_pis, ok=jnp.all(stats["phase_ok"]),
                    **stats, **metrics)


def _phases(schedule: Schedule, dtype):
  return (schedule.sft_weight.astype(dtype), schedule.rl_weight.astype(dtype),
          schedule.duration.astype(dtype), schedule.reset_reference)


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
  return _run_flow(inst, schedule, theta0, n_save=n_save, rtol=rtol, atol=atol,
                   max_steps=max_steps, method=method)


@functools.partial(jax.jit, static_argnames=("n_save", "method"))
def _run_flow(inst, schedule, theta0, *, n_save, rtol, atol, max_steps, method):
  theta0 = initial_logits(inst) if theta0 is None else theta0
  dtype = theta0.dtype
  frac = jnp.arange(1, n_save + 1, dtype=dtype) / n_save
  mean0 = logit_system(inst, 0.0, 1.0).row_mean(theta0)  # conserved by every phase's flow

  def phase_step(carry, ph):
    theta, reference, t_start = carry
    a, b, dur, reset = ph
    reference, inst_p = _phase_instance(inst, reference, theta, reset)
    system = logit_system(inst_p, a, b)
    ts = dur * frac
    sol, stiff = solve_logit_system(system, system.to_internal(theta), ts,
                                    stiffness_rate(inst_p, a, b), mean0, rtol=rtol, atol=atol,
                                    max_steps=max_steps, method=method)
    stats = dict(phase_ok=sol.ok, reached=sol.t, steps=sol.accepted, rejected=sol.rejected,
                 stiff=stiff)
    return (sol.ys[-1], reference, t_start + dur), (sol.ys, reference, t_start + ts, stats)

  _, (thetas, refs, times, stats) = jax.lax.scan(
      phase_step, (theta0, inst.reference, jnp.zeros((), dtype)), _phases(schedule, dtype))
  times = jnp.concatenate([jnp.zeros((1,), dtype), times.reshape(-1)])
  return _assemble(inst, theta0, thetas, refs, times, stats, n_save)


@functools.partial(jax.jit, static_argnames=("optimizer", "n_save"))
def run_steps(inst: Instance, schedule: Schedule, theta0: jax.Array | None = None, *,
              optimizer: str = "sgd", learning_rate=1.0, n_save: int = 16) -> Trajectory:
  r"""Runs a pipeline as discrete optax steps (a fresh optimiser state per phase).

  Each step applies the optimiser to the gradient of a_p L − b_p J_β(·; ρ_p), i.e. to
  −(the flow's vector field); ``duration[p]`` is rounded to a whole number of steps. SGD with
  learning rate η is the explicit Euler scheme of the flow with step η.

  Args:
    inst: instance.
    schedule: phases (durations in steps).
    theta0: [X, Y] initial logits (default log ρ).
    optimizer: "sgd" or "adam".
    learning_rate: step size (traced: no recompile per value).
    n_save: points saved per phase (after evenly spaced step counts).

  Returns:
    :class:`Trajectory` (``times`` are step counts; ``phase_ok`` says the iterates stayed finite).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.schedules import sft_only_schedule
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.9, 0.1]])
    >>> tr = run_steps(inst, sft_only_schedule(50), learning_rate=2.0, n_save=1)
    >>> [round(float(v), 4) for v in jnp.exp(tr.final_log_pi[0])]  # SGD on L → d
    [0.5, 0.5]
  """
  theta0 = initial_logits(inst) if theta0 is None else theta0
  dtype = theta0.dtype
  opt = make_optimizer(optimizer, jnp.asarray(learning_rate, dtype))
  frac = jnp.arange(1, n_save + 1, dtype=dtype) / n_save

  def phase_step(carry, ph):
    theta, reference, t_start = carry
    a, b, dur, reset = ph
    reference, inst_p = _phase_instance(inst, reference, theta, reset)
    n_steps = jnp.round(dur).astype(jnp.int32)
    ends = jnp.round(n_steps * frac).astype(jnp.int32)
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])

    def one(_, state):
      th, os = state
      grad = -vector_field(inst_p, th, a, b)
      upd, os = opt.update(grad, os, th)
      return optax.apply_updates(th, upd), os

    def chunk(state, se):
      state = jax.lax.fori_loop(se[0], se[1], one, state)
      return state, state[0]

    (theta, _), thetas = jax.lax.scan(chunk, (theta, opt.init(theta)), (starts, ends))
    stats = dict(phase_ok=jnp.all(jnp.isfinite(thetas)), reached=n_steps.astype(dtype),
                 steps=n_steps, rejected=jnp.zeros((), jnp.int32), stiff=jnp.asarray(False))
    return (theta, reference, t_start + n_steps), (thetas, reference,
                                                   (t_start + ends).astype(dtype), stats)

  _, (thetas, refs, times, stats) = jax.lax.scan(
      phase_step, (theta0, inst.reference, jnp.zeros((), jnp.int32)), _phases(schedule, dtype))
  times = jnp.concatenate([jnp.zeros((1,), dtype), times.reshape(-1)])
  return _assemble(inst, theta0, thetas, refs, times, stats, n_save)


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
