r"""A pipeline run as a trajectory: the metrics sampled along it and how runs are assembled.

Shared by the flows (:mod:`.flows`) and the discrete optimiser steps (:mod:`.optimizer_steps`):
a run is a sequence of phases (:class:`~.schedules.Schedule`), each saving ``n_save`` points;
:func:`assemble_trajectory` joins them with the start point and evaluates L, J, J_β, the two KL
terms, the gradient norms and cos∠(∇L, ∇J_β) at every point.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (SFT-then-RL and RL-then-SFT pipelines).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import objectives as obj
from .instance import Instance, with_reference
from .objectives import logits_of
from .schedules import Schedule

__all__ = ["GRAD_COSINE_RTOL", "Trajectory", "gradient_scales", "trajectory_metrics",
           "phase_instance", "assemble_trajectory", "schedule_phases"]

# cos∠(∇L, ∇J_β) is reported (not NaN) only when both gradients exceed this fraction of their
# natural scales (:func:`gradient_scales`): below it they are within ~1e7 roundings of 0.
GRAD_COSINE_RTOL = 1e-9


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


def phase_instance(inst: Instance, reference: jax.Array, theta: jax.Array, reset
                   ) -> tuple[jax.Array, Instance]:
  """(reference, instance) of a phase: a phase that resets takes the current policy as ρ.

  ρ_p = softmax(θ) where ``reset`` (an RL phase after SFT regularises towards the SFT policy),
  else the reference carried from the phase before.

  Args:
    inst: instance.
    reference: [X, Y] the reference carried into the phase.
    theta: [X, Y] logits at the phase's start.
    reset: [] bool, take the current policy as the reference.

  Returns:
    (ρ_p [X, Y], the instance with ρ_p as its reference).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> ref, _ = phase_instance(inst, inst.reference, jnp.log(jnp.array([[0.2, 0.8]])), True)
    >>> [round(v, 6) for v in ref[0].tolist()]
    [0.2, 0.8]
  """
  reference = jnp.where(reset, jnp.exp(_policy(inst, theta)), reference)
  return reference, with_reference(inst, reference)


def assemble_trajectory(inst: Instance, theta0: jax.Array, thetas: jax.Array, refs: jax.Array,
                        times: jax.Array, stats: dict, n_save: int) -> Trajectory:
  """Joins the start point and the per-phase saves into a trajectory, with every metric.

  Args:
    inst: instance.
    theta0: [X, Y] logits at the start.
    thetas: [P, n_save, X, Y] logits saved in each phase (NaN where a solve stopped).
    refs: [P, X, Y] each phase's RL reference.
    times: [1 + P · n_save] times of the points.
    stats: per-phase solver statistics (``phase_ok``, ``reached``, ``steps``, ``rejected``,
      ``stiff``: [P] each).
    n_save: points saved per phase.

  Returns:
    :class:`Trajectory` with T = 1 + P · n_save points; a point not reached is NaN everywhere.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> th0 = jnp.zeros((1, 2)); ths = jnp.log(jnp.array([[[[0.2, 0.8]]]]))
    >>> stats = dict(phase_ok=jnp.array([True]), reached=jnp.array([1.0]),
    ...              steps=jnp.array([3]), rejected=jnp.array([0]), stiff=jnp.array([False]))
    >>> tr = assemble_trajectory(inst, th0, ths, inst.reference[None], jnp.array([0.0, 1.0]),
    ...                          stats, 1)
    >>> tr.phase.tolist(), [round(v, 4) for v in tr.reward.tolist()]  # J = E_π r
    ([0, 0], [0.5, 0.8])
  """
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


def schedule_phases(schedule: Schedule, dtype) -> tuple:
  """The schedule's phases as ``lax.scan`` inputs: (a [P], b [P], duration [P], reset [P]).

  Phase p runs θ̇ = −a_p ∇L + b_p ∇J_β for duration_p; the floats are cast to ``dtype``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.schedules import sft_then_rl_schedule
    >>> a, b, dur, reset = schedule_phases(sft_then_rl_schedule(2.0, 3.0), jnp.float64)
    >>> a.tolist(), b.tolist(), dur.tolist(), reset.tolist()
    ([1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [False, True])
  """
  return (schedule.sft_weight.astype(dtype), schedule.rl_weight.astype(dtype),
          schedule.duration.astype(dtype), schedule.reset_reference)
