r"""Gradient flows and optimiser steps in logits for SFT, RL and their pipelines (THEORY.md E).

Flows are Euclidean gradient flows of the population objectives for the tabular softmax policy
π = softmax(θ) (closed-form gradients of theory/objectives.py, cheaper than autodiff):

- SFT:   θ̇ = −∇L(θ)
- RL:    θ̇ = ∇J_β(θ; ρ) with a fixed reference ρ
- joint: θ̇ = −∇(L − λ J_β)(θ)

All are one field ``θ̇ = −a ∇L + b ∇J_β(·; ρ_phase)`` with weights (a, b) per phase. A pipeline is
a :class:`Schedule` of phases (weights, duration, and whether the RL reference is reset to the
current policy at the phase start), integrated phase by phase with diffrax (Tsit5, PID step-size
control, rtol/atol) inside one ``lax.scan``, so the same compiled function runs every pipeline of
the same number of phases, and ``jax.vmap`` batches it over instances padded to one shape
(masked responses have no mass: their logits are held fixed and never enter the policy).
:func:`run_steps` runs the same schedules as discrete optax steps (SGD or Adam), the way a
trainer does, with durations counted in steps.

Every run returns a :class:`Trajectory` of L, J, J_β (against the instance's own ρ and β),
E_w KL(d‖π), E_w KL(π‖ρ), the two gradient norms and the cosine between ∇L and ∇J_β (the RL
gradient being the one the pipeline's RL phase follows there: its current reference).

Default durations (:func:`pipeline_schedule`) are in units of u = 1 / min_x w_x (the time over which
the slowest prompt's logits move by O(1) under a unit-scale force; u = |X| for uniform weights):
SFT 5u, RL 5u, alternating SFT/RL with period u over 10u, joint 10u with λ = 1.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (SFT-then-RL and RL-then-SFT pipelines);
  Kidger, "On Neural Differential Equations" (2021) (diffrax).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import optax

from . import objectives as obj
from .instance import Instance, rl_stage_after_sft, with_reference
from .objectives import initial_logits, logits_of
from .optimizers import make_optimizer

__all__ = [
    "Schedule", "Trajectory", "PIPELINE_NAMES", "time_unit", "natural_time",
    "vector_field", "integrate", "flow", "sft_flow", "rl_flow", "trajectory_metrics",
    "sft_only_schedule", "rl_only_schedule", "sft_then_rl_schedule", "rl_then_sft_schedule",
    "alternating_schedule", "joint_schedule", "pipeline_schedule", "run_flow", "run_steps",
    "run_pipeline", "sft_then_rl_endpoint",
]

PIPELINE_NAMES = ("sft_then_rl", "rl_then_sft", "alternating", "joint")


# ----------------------------------------------------------------------------- basic pieces

def time_unit(inst: Instance) -> jax.Array:
  """u = 1 / min_x w_x over real (weight > 0) prompts: the pipelines' unit of time."""
  w = inst.prompt_weights
  return 1.0 / jnp.min(jnp.where(w > 0, w, jnp.inf))


def natural_time(inst: Instance) -> jax.Array:
  r"""The fastest time scale of the RL flow: 1 / (max_x w_x (β + max_x osc_y r)).

  The Jacobian of ∇J_β in logits is bounded by w_x(β + osc r) per prompt, so an explicit solver
  needs O(T / natural_time) steps to reach time T.
  """
  support = obj.rl_support(inst)
  r_hi = jnp.max(jnp.where(support, inst.reward, -jnp.inf), axis=-1)
  r_lo = jnp.min(jnp.where(support, inst.reward, jnp.inf), axis=-1)
  osc = jnp.max(jnp.where(inst.prompt_weights > 0, r_hi - r_lo, 0.0))
  return 1.0 / (jnp.max(inst.prompt_weights) * (inst.beta + osc))


def vector_field(inst: Instance, theta: jax.Array, sft_weight, rl_weight,
                 log_reference: jax.Array | None = None) -> jax.Array:
  r"""θ̇ = −a ∇L(θ) + b ∇J_β(θ; ρ) with ρ = ``inst.reference`` (closed forms, B5).

  Args:
    inst: instance whose ``reference`` is the RL reference of this phase.
    theta: [X, Y] logits.
    sft_weight: a, the weight of the SFT descent direction.
    rl_weight: b, the weight of the RL ascent direction.

  Returns:
    [X, Y] time derivative of the logits (0 off the RL support).
  """
  # Fused form of obj.sft_grad and obj.rl_grad with one exponential per entry (the flows spend
  # their time here): π = e^{θ−m}/z, log π = θ − m − log z, ∇J_β = w F h, h = r − β log(π/ρ).
  support = obj.rl_support(inst)
  theta = jnp.where(support, theta, -jnp.inf)
  peak = jnp.max(theta, axis=-1, keepdims=True)
  e = jnp.where(support, jnp.exp(theta - peak), 0.0)
  z = jnp.sum(e, axis=-1, keepdims=True)
  pi = e / z
  if log_reference is None:
    log_reference = jnp.log(jnp.where(support, inst.reference, 1.0))
  log_ratio = jnp.where(support, theta - peak - jnp.log(z) - log_reference, 0.0)
  h = jnp.where(support, inst.reward - inst.beta * log_ratio, 0.0)
  rl = pi * (h - jnp.sum(pi * h, axis=-1, keepdims=True))
  w = inst.prompt_weights[:, None]
  return jnp.where(support, w * (rl_weight * rl - sft_weight * (pi - inst.data)), 0.0)


def integrate(field, y0, ts, args, *, t0=0.0, rtol=1e-8, atol=1e-10, max_steps=1 << 16):
  """Integrates ẏ = field(y, args) from t0, saving at ``ts`` (diffrax Tsit5 + PID control).

  Args:
    field: callable (y, args) -> ẏ (any pytree y).
    y0: initial state.
    ts: [T] save times, monotone, on the side of t0 the integration runs to (ts[-1] is t1).
    args: pytree passed to ``field``.
    t0: start time.
    rtol, atol: tolerances of the PID step-size controller.
    max_steps: step budget; running out is reported, not raised.

  Returns:
    (ys with a leading [T] axis, ok: [] bool, True when the solver reached ts[-1]).
  """
  term = diffrax.ODETerm(lambda t, y, a: field(y, a))
  sol = diffrax.diffeqsolve(
      term, diffrax.Tsit5(), t0=t0, t1=ts[-1], dt0=None, y0=y0, args=args,
      saveat=diffrax.SaveAt(ts=ts),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      max_steps=max_steps, throw=False, adjoint=diffrax.ForwardMode())
  return sol.ys, sol.result == diffrax.RESULTS.successful


def _logit_field(theta, args):
  inst, a, b, log_reference = args
  return vector_field(inst, theta, a, b, log_reference)


def _field_args(inst: Instance, a, b):
  """Arguments of the integrated field; log ρ is computed once per phase, not per evaluation."""
  support = obj.rl_support(inst)
  return inst, a, b, jnp.log(jnp.where(support, inst.reference, 1.0))


@functools.partial(jax.jit, static_argnames=("rtol", "atol", "max_steps"))
def flow(inst: Instance, ts: jax.Array, sft_weight, rl_weight, theta0: jax.Array | None = None,
         *, rtol: float = 1e-8, atol: float = 1e-10, max_steps: int = 1 << 16):
  r"""θ(t) of θ̇ = −a∇L + b∇J_β(·; inst.reference) from θ₀ (default log ρ), at times ``ts``.

  Args:
    inst: instance (its reference is the RL reference).
    ts: [T] increasing save times > 0 (or decreasing < 0 to run backwards in time).
    sft_weight, rl_weight: a and b.
    theta0: [X, Y] initial logits (default :func:`initial_logits`).
    rtol, atol, max_steps: solver settings.

  Returns:
    (thetas [T, X, Y], ok []).

  >>> import jax.numpy as jnp
  >>> from nondecoupling.theory.instance import make_instance
  >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
  >>> th, ok = flow(inst, jnp.array([200.0]), 0.0, 1.0)
  >>> round(float(jnp.exp(obj.policy_log_probs(inst, th[-1]))[0, 1]), 4)  # → π*_β
  0.7311
  """
  theta0 = initial_logits(inst) if theta0 is None else theta0
  dtype = theta0.dtype
  args = _field_args(inst, jnp.asarray(sft_weight, dtype), jnp.asarray(rl_weight, dtype))
  return integrate(_logit_field, theta0, jnp.asarray(ts, dtype), args, rtol=rtol, atol=atol,
                   max_steps=max_steps)


def sft_flow(inst, ts, theta0=None, **kw):
  """SFT flow θ̇ = −∇L (see :func:`flow`)."""
  return flow(inst, ts, 1.0, 0.0, theta0, **kw)


def rl_flow(inst, ts, theta0=None, **kw):
  """RL flow θ̇ = ∇J_β(·; inst.reference) (see :func:`flow`)."""
  return flow(inst, ts, 0.0, 1.0, theta0, **kw)


def sft_then_rl_endpoint(inst: Instance) -> jax.Array:
  """log π*_β(d): the exact end point of SFT-then-RL (Gibbs tilt of the data, instance's β)."""
  return obj.gibbs_tilt(rl_stage_after_sft(inst))


# ----------------------------------------------------------------------------- schedules

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
  """Phases of a pipeline (arrays [P]; P is static through the shapes).

  Attributes:
    sft_weight: [P] a, weight of −∇L in each phase.
    rl_weight: [P] b, weight of ∇J_β in each phase.
    duration: [P] length of each phase (time for flows, steps for :func:`run_steps`), > 0.
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
  return Schedule(jnp.asarray(a, f), jnp.asarray(b, f), jnp.asarray(dur, f),
                  jnp.asarray(reset, bool))


def sft_only_schedule(duration) -> Schedule:
  """One SFT phase."""
  return _schedule([1.0], [0.0], [duration], [False])


def rl_only_schedule(duration) -> Schedule:
  """One RL phase with the instance's reference."""
  return _schedule([0.0], [1.0], [duration], [False])


def sft_then_rl_schedule(t_sft, t_rl) -> Schedule:
  """SFT from ρ for t_sft, then RL for t_rl with the reference reset to the SFT end policy."""
  return _schedule([1.0, 0.0], [0.0, 1.0], [t_sft, t_rl], [False, True])


def rl_then_sft_schedule(t_rl, t_sft) -> Schedule:
  """RL from ρ (reference ρ) for t_rl, then SFT for t_sft."""
  return _schedule([0.0, 1.0], [1.0, 0.0], [t_rl, t_sft], [False, False])


def alternating_schedule(period: float, total: float, start: str = "sft") -> Schedule:
  """SFT and RL (reference ρ) alternating every ``period`` until ``total`` (last phase cut).

  The number of phases, ceil(total / period), is static (it fixes the compiled shape).
  """
  if period <= 0 or total <= 0:
    raise ValueError(f"period and total must be > 0, got {period} and {total}")
  n = max(1, math.ceil(total / period - 1e-12))
  durs = [period] * (n - 1) + [total - period * (n - 1)]
  first = 0 if start == "sft" else 1
  a = [1.0 if (i + first) % 2 == 0 else 0.0 for i in range(n)]
  return _schedule(a, [1.0 - v for v in a], durs, [False] * n)


def joint_schedule(duration, lam=1.0) -> Schedule:
  """One joint phase θ̇ = −∇(L − λJ_β) (reference ρ)."""
  return _schedule([1.0], [lam], [duration], [False])


def pipeline_schedule(name: str, inst: Instance) -> Schedule:
  """The documented default schedule of a named pipeline, in units of :func:`time_unit`.

  sft_then_rl: SFT 5u then RL 5u; rl_then_sft: RL 5u then SFT 5u; alternating: period u over
  10u starting with SFT; joint: 10u with λ = 1.
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


# ----------------------------------------------------------------------------- trajectories

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
  """A pipeline run sampled at T points (T = 1 + P · n_save; leading batch axes under vmap).

  Attributes:
    times: [T] time (flows) or step count (optax) since the start.
    phase: [T] int index of the phase each point belongs to (0 for the start point).
    log_pi: [T, X, Y] policy log-probabilities.
    sft_loss, reward, regularized_reward: [T] L, J and J_β (instance ρ and β).
    kl_data: [T] E_w KL(d_x ‖ π_x) = L − L(d).
    kl_reference: [T] E_w KL(π_x ‖ ρ_x) (instance ρ).
    sft_grad_norm, rl_grad_norm: [T] ‖∇L‖ and ‖∇J_β‖ (RL gradient against the phase reference).
    grad_cosine: [T] cos∠(∇L, ∇J_β) (0 where either gradient vanishes).
    ok: [] bool, every solve reached its end.
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
  ok: jax.Array

  @property
  def final_log_pi(self) -> jax.Array:
    return self.log_pi[..., -1, :, :]


def _point_metrics(inst: Instance, log_pi: jax.Array, rl_reference: jax.Array) -> dict:
  theta = logits_of(inst, log_pi)
  g_sft = obj.sft_grad(inst, theta)
  g_rl = obj.rl_grad(with_reference(inst, rl_reference), theta)
  n_sft = jnp.sqrt(jnp.sum(g_sft ** 2))
  n_rl = jnp.sqrt(jnp.sum(g_rl ** 2))
  denom = n_sft * n_rl
  cos = jnp.where(denom > 0, jnp.sum(g_sft * g_rl) / jnp.where(denom > 0, denom, 1.0), 0.0)
  return dict(
      sft_loss=obj.sft_loss(inst, log_pi),
      reward=obj.reward(inst, log_pi),
      regularized_reward=obj.regularized_reward(inst, log_pi),
      kl_data=obj.sft_excess(inst, log_pi),
      kl_reference=obj.expect(inst, obj.kl_rows(log_pi, obj.safe_log(inst.reference))),
      sft_grad_norm=n_sft, rl_grad_norm=n_rl, grad_cosine=cos)


def trajectory_metrics(inst: Instance, log_pis: jax.Array, rl_references: jax.Array | None = None
                       ) -> dict:
  """Metrics of :class:`Trajectory` at policies ``log_pis`` [T, X, Y] (dict of [T] arrays).

  ``rl_references`` [T, X, Y] are the RL references for the RL gradient (default: instance ρ).
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


def _assemble(inst, theta0, thetas, refs, times, ok, n_save) -> Trajectory:
  """Joins the start point and the per-phase saves ([P, n_save, X, Y]) into a trajectory."""
  n_phases = thetas.shape[0]
  shape = thetas.shape[-2:]
  thetas = jnp.concatenate([theta0[None], thetas.reshape((-1,) + shape)])
  ref_points = jnp.concatenate([refs[:1], jnp.repeat(refs, n_save, axis=0)])
  log_pis = jax.vmap(lambda th: _policy(inst, th))(thetas)
  metrics = trajectory_metrics(inst, log_pis, ref_points)
  phase = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                           jnp.repeat(jnp.arange(n_phases, dtype=jnp.int32), n_save)])
  return Trajectory(times=times, phase=phase, log_pi=log_pis, ok=jnp.all(ok), **metrics)


@functools.partial(jax.jit, static_argnames=("n_save", "rtol", "atol", "max_steps"))
def run_flow(inst: Instance, schedule: Schedule, theta0: jax.Array | None = None, *,
             n_save: int = 16, rtol: float = 1e-8, atol: float = 1e-10,
             max_steps: int = 1 << 16) -> Trajectory:
  r"""Integrates a pipeline's flows phase by phase (diffrax) and returns its trajectory.

  Phase p runs θ̇ = −a_p ∇L + b_p ∇J_β(·; ρ_p) for ``duration[p]``, where ρ_p is the instance's ρ
  or, if ``reset_reference[p]``, the policy at the start of the phase (kept for later phases).

  Args:
    inst: instance (unbatched; vmap for batches of one padded shape).
    schedule: the phases (see :func:`sft_then_rl_schedule` etc.).
    theta0: [X, Y] initial logits (default log ρ).
    n_save: points saved per phase, evenly spaced in time.
    rtol, atol, max_steps: solver settings.

  Returns:
    :class:`Trajectory` with T = 1 + P · n_save points.
  """
  theta0 = initial_logits(inst) if theta0 is None else theta0
  dtype = theta0.dtype
  frac = jnp.arange(1, n_save + 1, dtype=dtype) / n_save

  def phase_step(carry, ph):
    theta, reference, t_start = carry
    a, b, dur, reset = ph
    reference, inst_p = _phase_instance(inst, reference, theta, reset)
    ts = dur * frac
    thetas, ok = integrate(_logit_field, theta, ts, _field_args(inst_p, a, b), rtol=rtol,
                           atol=atol, max_steps=max_steps)
    return (thetas[-1], reference, t_start + dur), (thetas, reference, t_start + ts, ok)

  phases = (schedule.sft_weight.astype(dtype), schedule.rl_weight.astype(dtype),
            schedule.duration.astype(dtype), schedule.reset_reference)
  _, (thetas, refs, times, ok) = jax.lax.scan(
      phase_step, (theta0, inst.reference, jnp.zeros((), dtype)), phases)
  times = jnp.concatenate([jnp.zeros((1,), dtype), times.reshape(-1)])
  return _assemble(inst, theta0, thetas, refs, times, ok, n_save)


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
    :class:`Trajectory` (``times`` are step counts).
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
    return (theta, reference, t_start + n_steps), (thetas, reference,
                                                   (t_start + ends).astype(dtype))

  phases = (schedule.sft_weight.astype(dtype), schedule.rl_weight.astype(dtype),
            schedule.duration.astype(dtype), schedule.reset_reference)
  _, (thetas, refs, times) = jax.lax.scan(
      phase_step, (theta0, inst.reference, jnp.zeros((), jnp.int32)), phases)
  times = jnp.concatenate([jnp.zeros((1,), dtype), times.reshape(-1)])
  ok = jnp.all(jnp.isfinite(thetas))
  return _assemble(inst, theta0, thetas, refs, times, ok, n_save)


def run_pipeline(inst: Instance, name: str, *, n_save: int = 16, rtol: float = 1e-8,
                 atol: float = 1e-10) -> Trajectory:
  """Runs the named pipeline (:data:`PIPELINE_NAMES`) with its default schedule as a flow."""
  return run_flow(inst, pipeline_schedule(name, inst), n_save=n_save, rtol=rtol, atol=atol)
