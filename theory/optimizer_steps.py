r"""Pipelines run as discrete optimiser steps (SGD or Adam through optax), the way a trainer does.

The same :class:`~.schedules.Schedule` as the flows of :mod:`.flows`, with durations in steps:
SGD with learning rate η is the explicit Euler scheme of the flow with step η. Kept apart from
the flows so that what only integrates flows does not import optax.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (SFT-then-RL and RL-then-SFT pipelines).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from .instance import Instance
from .logit_field import vector_field
from .objectives import initial_logits
from .optimizers import make_optimizer
from .schedules import Schedule
from .trajectory import Trajectory, assemble_trajectory, phase_instance, schedule_phases

__all__ = ["run_steps"]


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
    reference, inst_p = phase_instance(inst, reference, theta, reset)
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
      phase_step, (theta0, inst.reference, jnp.zeros((), jnp.int32)), schedule_phases(schedule, dtype))
  times = jnp.concatenate([jnp.zeros((1,), dtype), times.reshape(-1)])
  return assemble_trajectory(inst, theta0, thetas, refs, times, stats, n_save)
