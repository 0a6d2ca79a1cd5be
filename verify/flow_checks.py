"""Batched checks of this project's dynamics statements (D2 on flows, D5, D6, D7) for verify.

Each ``check_*(batch, key) -> Verdict`` returns [B] arrays; :mod:`.registry` lists them. Pointwise statements (D5 PL inequalities, D6) are evaluated on every instance of the
batch at random policies drawn from ``key`` (logits N(0, 2²) on the RL support). Flow-based
statements (D2 finite differences, D5 decay, D7) integrate flows, so they run on the first
``FLOW_SAMPLE`` (D7: ``D7_SAMPLE``) instances of each batch (the others are reported as not
applying) and keep verify's default run short; the D7 PL-time check also skips instances whose flow to t_ε would
need more than ``MAX_FLOW_UNITS`` natural time units (extreme β or near-zero probabilities),
again as not applying.

All statements are this project's own (source "ours"), not the paper's.

Slack (the bound below which a margin is a failure, :mod:`nondecoupling.theory.verdict`):

- D5 pl_rl, pl_sft, D6: the rounding bounds the theory computes (:mod:`..theory.statements.pl`,
  :mod:`..theory.statements.spectral`).
- D2 on flows: 0. Its margin is already ``rel_tol`` (1e-4) minus the finite differences' error
  scaled by their Taylor terms, with rounding floors (:func:`..theory.statements.initial_rates.d2_check`).
- D5 decay: the margin is min_t (bound(t) − gap(t))/max(bound(t), gap(t)); its slack at t is
  ``SOLVER_REL`` (a global relative error 1e-6 for flows integrated at rtol 1e-9) times
  gap + bound plus the gap's rounding bound γ_N S_gap(t), over the same denominator. The statement applies only when gap(0) exceeds its own rounding bound
  γ_N S_gap(0) (S_gap the KL scale of the gap, :func:`..theory.statements.pl.rl_gap_scale`):
  below that level gap(0) is rounding and there is no decay to check.
- D7 pl_time: ``SOLVER_REL`` plus the rounding bound of gap(t_ε) over ε gap(0); it applies when
  gap(0) > ``GAP_FLOOR`` (1e-12, the solver's absolute tolerance in logits).
- D7 argmax: ``ARGMAX_REL`` (1e-7, relative): t* and the grid come from separate integrations at
  rtol 1e-9 over up to ~1e4 time units.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from ..theory import objectives as obj
from ..theory.flows import natural_time
from ..theory.instance import Instance, rl_stage_after_sft
from ..theory.rounding import entries
from ..theory.statements import initial_rates, pl, rl_duration, spectral
from ..theory.verdict import Verdict, rounding_slack
from .exported_programs import exported, exported_jit, exported_partial
from .stored_programs import program_name
from .sweep import AXIS, instance_mesh, shard_batch

__all__ = ["FLOW_SAMPLE", "MAX_FLOW_UNITS", "random_logits", "check_pl_rl", "check_pl_sft",
           "check_spectral", "check_d2_flow", "check_decay_rl", "check_decay_sft",
           "check_d7_pl_time", "check_d7_argmax"]

FLOW_SAMPLE = 32        # instances per batch on which flow-based statements run
D7_SAMPLE = 16          # fewer for D7 (a grid flow plus a bisection of flows per instance)
MAX_FLOW_UNITS = 2e4    # D7: skip flows longer than this many natural time units
DECAY_UNITS = 30.0      # D5 decay: horizon in natural time units
DECAY_SAVES = 8
D7_EPS = 0.1
D7_GRID = 65
GAP_FLOOR = 1e-12       # D7: an initial RL gap below this is at the solver's absolute tolerance
SOLVER_REL = 1e-6       # D5 decay, D7: relative error allowed for flows integrated at rtol 1e-9
ARGMAX_REL = 1e-7       # D7 argmax: relative agreement of two integrations of the same flow


def random_logits(inst: Instance, key: jax.Array, scale: float = 2.0) -> jax.Array:
  """[X, Y] random finite logits N(0, scale²) (masked entries are inert)."""
  return scale * jax.random.normal(key, inst.data.shape, inst.data.dtype)


def _verdict(lhs, rhs, margin, applies, slack, ratio=None) -> Verdict:
  """A Verdict; ``ratio`` (how much of the bound is used, 1 = tight) defaults to NaN."""
  if ratio is None:
    ratio = jnp.full(jnp.shape(margin), jnp.nan)
  return Verdict(lhs=lhs, rhs=rhs, margin=margin, applies=jnp.asarray(applies), ratio=ratio,
                 slack=jnp.broadcast_to(jnp.asarray(slack, jnp.result_type(margin)),
                                        jnp.shape(margin)))


def _used(used, budget):
  ok = budget > 0
  return jnp.where(ok, used / jnp.where(ok, budget, 1.0), jnp.nan)


def _keys(key, n):
  return jax.random.split(key, n)


def _first_rows(batch: Instance, size: int) -> tuple[Instance, int, int]:
  """The first k = min(n, size) instances of a batch of n, on the host."""
  n = int(batch.prompt_weights.shape[0])
  k = min(n, size)
  return jax.tree.map(lambda a: np.asarray(a)[:k], batch), n, k


@functools.lru_cache(maxsize=None)
def _on_every_device(fn, optimise: bool = False, **static):
  """``fn(batch, ...)``, a vmap over instances, as one program per device on its shard of the
  batch (``shard_map`` over the instance mesh): each device runs the loops of its own flows with
  nothing exchanged between devices. As a plain ``jit`` of the whole batch on one device, a flow
  check ran on one core of two; over a sharded batch without ``shard_map``, every step of the
  batched loop waited for both devices (D7, warm: 1.54 s on one device, 2.27 s sharded,
  0.63–0.89 s with ``shard_map``, 4 December). Lowered programs are kept (:func:`exported_jit`)."""
  bound = functools.partial(fn, **static)
  mapped = jax.shard_map(bound, mesh=instance_mesh(), in_specs=PartitionSpec(AXIS),
                         out_specs=PartitionSpec(AXIS), check_vma=False)
  return exported_jit(mapped, f"{program_name(bound)}[shard_map]", optimise)


def _sample_with_keys(batch: Instance, key: jax.Array, size: int = FLOW_SAMPLE):
  """(the first k instances and their keys ``split(key, k)``, split over the devices; n; k)."""
  host, n, k = _first_rows(batch, size)
  placed, _ = shard_batch((host, np.asarray(_keys(key, k))))
  return placed, n, k


def _pad_verdict(v: Verdict, n: int, k: int) -> Verdict:
  """A Verdict (numpy) on n instances from one on the first k (possibly padded past k): the rest
  do not apply."""
  def pad(a, fill):
    a = np.asarray(a)
    a = a[:k] if a.ndim else np.broadcast_to(a, (k,))
    return np.concatenate([a, np.full((n - k,), fill, a.dtype)])

  return Verdict(lhs=pad(v.lhs, np.nan), rhs=pad(v.rhs, np.nan), margin=pad(v.margin, np.nan),
                 applies=pad(np.asarray(v.applies, bool), False), ratio=pad(v.ratio, np.nan),
                 slack=pad(v.slack, 0.0))


# ----------------------------------------------------------------------------- D5, D6 pointwise

def _pl_point(inst, key, which):
  theta = random_logits(inst, key)
  log_pi = obj.policy_log_probs(inst, theta)
  res = pl.pl_rl(inst, log_pi) if which == "rl" else pl.pl_sft(inst, log_pi)
  return _verdict(res["lhs"], res["rhs"], res["margin"], jnp.isfinite(res["rhs"]), res["slack"],
                  _used(res["rhs"], res["lhs"]))


def _pl_batch(batch, key, which):
  keys = _keys(key, batch.prompt_weights.shape[0])
  return jax.vmap(lambda i, k: _pl_point(i, k, which))(batch, keys)


def check_pl_rl(batch: Instance, key: jax.Array) -> Verdict:
  """D5 (ours): ‖∇J_β‖² ≥ 2 μ_RL (J_β* − J_β) at a random policy per instance."""
  return exported_partial(_pl_batch, which="rl")(batch, key)


def check_pl_sft(batch: Instance, key: jax.Array) -> Verdict:
  """D5 (ours): ‖∇L‖² ≥ 2 μ_SFT (L − L(d)) at a random policy per instance."""
  return exported_partial(_pl_batch, which="sft")(batch, key)


def _spectral_point(inst, key):
  log_pi = obj.policy_log_probs(inst, random_logits(inst, key))
  res = spectral.spectral_misalignment(inst, log_pi)
  real = inst.prompt_weights > 0
  m = jnp.where(real, jnp.minimum(res["margin"] + res["slack"],
                                  res["margin_exact"] + res["slack_exact"]), jnp.inf)
  i = jnp.argmin(m)
  return _verdict(jnp.abs(res["inner"][i]), res["bound"][i], res["margin_min"], True,
                  res["slack_min"], res["tightness_max"])


@exported
def check_spectral(batch: Instance, key: jax.Array) -> Verdict:
  """D6 (ours): |⟨∇_x L, ∇_x J_β⟩| ≤ w_x² β λ_max(F_x)² ‖P(d/π)‖ ‖P log(π*/π)‖ ≤ (max π)² form."""
  keys = _keys(key, batch.prompt_weights.shape[0])
  return jax.vmap(_spectral_point)(batch, keys)


# ----------------------------------------------------------------------------- flow-based

# D2 by finite differences applies only where the stencil moves the logits by at least this much:
# below it (near-tie rewards, gradients ~1e-13) the loss changes it differences are at the rounding
# level of O(1) logits and no finite-difference check can resolve the derivatives; the closed forms
# are then checked by the exact D2 statements.
RESOLVABLE_DISPLACEMENT = 1e-8


def _d2_batch(batch):
  def one(inst):
    res = initial_rates.d2_check(inst)
    err = 1e-4 - res["margin"]
    resolvable = res["displacement"] >= RESOLVABLE_DISPLACEMENT
    return _verdict(err, jnp.asarray(1e-4, err.dtype), res["margin"], resolvable, 0.0,
                    err / 1e-4)
  return jax.vmap(one)(batch)


@exported
def _d2_moves(batch):
  """[B] the smaller logit move of the two stencils (general ρ and ρ = d) of each instance."""
  move = lambda inst: jnp.minimum(initial_rates.d2_stencil_step(inst)[1],
                                  initial_rates.d2_stencil_step(rl_stage_after_sft(inst))[1])
  return jax.vmap(move)(batch)


def check_d2_flow(batch: Instance, key: jax.Array) -> Verdict:
  """D2 (ours): closed-form dL/dt(0), d²L/dt²(0) agree with finite differences of the flow.

  Only instances whose stencil moves the logits by ≥ RESOLVABLE_DISPLACEMENT are integrated (the
  others do not apply; their tiny displacements would only keep the batched solver busy): the
  resolvable ones fill the sample's shape, repeated where there are fewer (one compile).
  """
  del key
  host, n, k = _first_rows(batch, FLOW_SAMPLE)
  good = np.flatnonzero(np.asarray(_d2_moves(host)) >= RESOLVABLE_DISPLACEMENT)
  if good.size == 0:
    nothing = np.full((k,), np.nan)
    return _pad_verdict(_verdict(nothing, nothing, nothing, np.zeros((k,), bool), 0.0), n, k)
  placed, _ = shard_batch(jax.tree.map(lambda a: a[np.resize(good, k)], host))
  v = _on_every_device(_d2_batch)(placed)
  cols = {}
  for f in Verdict._fields:
    a = np.asarray(getattr(v, f))[:good.size]
    full = np.full((k,), False if f == "applies" else (0.0 if f == "slack" else np.nan), a.dtype)
    full[good] = a
    cols[f] = full
  return _pad_verdict(Verdict(**cols), n, k)


def _decay_point(inst, key, kind):
  theta0 = jnp.where(obj.rl_support(inst), random_logits(inst, key, 1.5), 0.0)
  unit = natural_time(inst) if kind == "rl" else 1.0 / jnp.max(inst.prompt_weights)
  ts = unit * DECAY_UNITS * jnp.arange(1, DECAY_SAVES + 1, dtype=theta0.dtype) / DECAY_SAVES
  res = pl.pl_decay(inst, ts, theta0, kind=kind)
  n = entries(inst)
  level0 = rounding_slack(res["gap0_scale"], n)
  bound, gap = res["bound"], res["gap"]
  den = jnp.maximum(bound, gap)
  pos = den > 0
  safe = jnp.where(pos, den, 1.0)
  margins = jnp.where(pos, (bound - gap) / safe, 1.0)
  err = SOLVER_REL * (gap + bound) + rounding_slack(res["gap_scale"], n)
  slacks = jnp.where(pos, err / safe, 0.0)
  i = jnp.argmin(margins + slacks)
  applies = res["ok"] & (res["gap0"] > level0)
  return _verdict(gap[i], bound[i], margins[i], applies, slacks[i], _used(gap[i], bound[i]))


def _decay_batch(batch, keys, kind):
  return jax.vmap(lambda i, k: _decay_point(i, k, kind))(batch, keys)


def check_decay_rl(batch: Instance, key: jax.Array) -> Verdict:
  """D5 (ours): along the RL flow, gap(t) ≤ gap(0) exp(−2∫μ_RL) (margin in log scale)."""
  placed, n, k = _sample_with_keys(batch, key)
  return _pad_verdict(_on_every_device(_decay_batch, optimise=True, kind="rl")(*placed), n, k)


def check_decay_sft(batch: Instance, key: jax.Array) -> Verdict:
  """D5 (ours): along the SFT flow, gap(t) ≤ gap(0) exp(−2∫μ_SFT) (margin in log scale)."""
  placed, n, k = _sample_with_keys(batch, key)
  return _pad_verdict(_on_every_device(_decay_batch, optimise=True, kind="sft")(*placed), n, k)


def _d7_setup(inst, key):
  inst_d = rl_stage_after_sft(inst)
  log_d = obj.policy_log_probs(inst_d, obj.initial_logits(inst_d))
  mu_start = pl.mu_rl(inst_d, log_d)
  mu_end = pl.mu_rl(inst_d, obj.gibbs_tilt(inst_d))
  t_est = jnp.log(1.0 / D7_EPS) / (2 * jnp.minimum(mu_start, mu_end))
  horizon = 1.5 * t_est
  unit = natural_time(inst_d)
  feasible = horizon / unit <= MAX_FLOW_UNITS
  lam = jnp.exp(jax.random.uniform(key, (), inst.data.dtype, jnp.log(0.1), jnp.log(10.0)))
  # Instances skipped for cost still run, on a short horizon, so the batch stays cheap.
  horizon = jnp.where(feasible, horizon, unit)
  return inst_d, lam, horizon, feasible


def _d7_batch(batch, keys):  # an ODE solve per instance: run-bound (compiled with optimise)

  def one(inst, k):
    inst_d, lam, horizon, feasible = _d7_setup(inst, k)
    res = rl_duration.optimal_rl_duration(inst_d, lam, horizon, D7_EPS, n_grid=D7_GRID, n_bisect=30,
                                 rtol=1e-9, atol=1e-12, max_steps=1 << 15)
    target = D7_EPS * res["gap0"]
    gap_round = rounding_slack(pl.rl_gap_scale(inst_d, obj.policy_log_probs(
        inst_d, res["theta_at_t_eps"])), entries(inst))
    pl_slack = SOLVER_REL + gap_round / jnp.where(target > 0, target, 1.0)
    pl_v = _verdict(res["gap_at_t_eps"], target, res["pl_margin"],
                    feasible & res["ok"] & res["t_eps_in_horizon"] & (res["gap0"] > GAP_FLOOR),
                    pl_slack, _used(res["gap_at_t_eps"], target))
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(res["grid_objective"])))
    am = _verdict(res["objective_star"], jnp.max(res["grid_objective"]),
                  res["argmax_margin"] / scale, feasible & res["ok"], ARGMAX_REL)
    return pl_v, am
  return jax.vmap(one)(batch, keys)


_D7_LAST: list = []  # [(batch, key, result)]: both D7 statements share one run per batch


def _d7_cached(batch, key):
  for b, k, res in _D7_LAST:
    if b is batch and bool(jnp.all(k == key)):
      return res
  placed, n, k = _sample_with_keys(batch, key, D7_SAMPLE)
  pl_v, am = _on_every_device(_d7_batch, optimise=True)(*placed)
  res = (_pad_verdict(pl_v, n, k), _pad_verdict(am, n, k))
  _D7_LAST[:] = _D7_LAST[-7:] + [(batch, key, res)]
  return res


def check_d7_pl_time(batch: Instance, key: jax.Array) -> Verdict:
  """D7 (ours): along the RL flow from d, gap(t_ε) ≤ ε gap(0) with t_ε = ln(1/ε)/(2μ_min)."""
  return _d7_cached(batch, key)[0]


def check_d7_argmax(batch: Instance, key: jax.Array) -> Verdict:
  """D7 (ours): the computed t*(λ) beats every grid time on J − λL along the RL flow from d."""
  return _d7_cached(batch, key)[1]
