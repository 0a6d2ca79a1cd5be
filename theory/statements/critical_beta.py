r"""The non-decoupling threshold for exact RL (this project's D1; not the paper's).

When does exact RL from a reference ρ *lower* the SFT loss? By B3 the change is C₁(β; ρ), so exactly
when C₁(β; ρ) < 0, i.e. E_w E_d r > β E_w log E_ρ e^{r/β}; a necessary condition is
E_w E_d r > E_w E_ρ r. The critical β_c where C₁(β_c; ρ) = 0 is unique when it exists.

Key fact (ours): g(β) = β C₁(β; ρ) = β E_w log E_ρ e^{r/β} − E_w E_d r is non-increasing in β with
g'(β) = −E_w KL(π*_β ‖ ρ), falling from E_w max_{supp ρ} r − E_w E_d r (β → 0) to
E_w E_ρ r − E_w E_d r (β → ∞). So β_c exists iff E_w E_d r > E_w E_ρ r (and d is not concentrated on
the maximisers), it is unique, and exact RL lowers the SFT loss exactly for β > β_c.

Rounding (see :mod:`..verdict`): h(t) = E_w[K_x(t) − t(E_d r − E_ρ r)] is evaluated from terms
of size S_h = E_w[K + max|c| + t Σ|d − ρ||r|], so Newton stops where |h| ≤ γ_N S_h (or its step
is below ``NEWTON_RTOL`` t): the root's residual β_c h has slack β_c γ_N S_h plus |g'| β_c times
the stopping tolerance (g' = −E_w KL(π*_β‖ρ)), and β_c itself is known to a relative
γ_N S_h / (t |h'(t)|) — large for a flat h, a nearly degenerate root. The sign statement's margin
(log β_c − log β)·βC₁ is a product: its slack is |log β_c − log β| β slack(C₁) +
|βC₁| × the error of log β_c. The necessary condition's gain Σ w Σ (d − ρ) r has scale
Σ w Σ |d − ρ||r|, and it applies only where C₁ < 0 beyond C₁'s own slack.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._numerics import centre, unit_roundoff
from ..instance import Instance
from ..objectives import c1, expect, gibbs_tilt, kl_rows, safe_log
from ..rounding import c1_scale, entries
from ..tilt import cumulant_gap
from ..verdict import Verdict, at_least, positive, rounding_slack

__all__ = ["scaled_c1", "critical_beta_from_terms", "beta_critical", "batch_beta_critical",
           "critical_beta_root",
           "critical_beta_sign", "rl_lowers_sft_needs_reward_gain"]

LOG_BETA_BRACKET = (-25.0, 25.0)  # β_c is searched in [e^-25, e^25] (about 1e-11 to 7e10)
NEWTON_MAX_STEPS = 200             # Newton from the right: a handful in practice
NEWTON_RTOL = 1e-14                # Newton stops when its step is below this times t = 1/β


def _root_invariants(d, rho, r):
  """What h_x(t) needs of one prompt that does not depend on t (:func:`_prompt_root_terms`):
  the reward centred under ρ (two passes) and its mass, maximum and largest magnitude on supp ρ,
  the gain Σ (d − ρ) r and its scale Σ |d − ρ||r|."""
  pos = rho > 0
  both = pos | (d > 0)
  _, dev = centre(rho, r)
  gain = jnp.sum(jnp.where(both, (d - rho) * r, 0.0))
  gain_scale = jnp.sum(jnp.where(both, jnp.abs((d - rho) * r), 0.0))
  return (dev, jnp.sum(rho * dev), jnp.max(jnp.where(pos, dev, -jnp.inf)),
          jnp.max(jnp.abs(dev)), gain, gain_scale)


def _root_terms_at(rho, dev, dev_mass, dev_top, t):
  """(K_x(t), Σ ρ (e^u − 1)(r − E_ρ r)) of one prompt from its invariants (two exponentials per
  entry): c = t (r − E_ρ r), K_x the cumulant gap of the tilt of ρ at β = 1/t
  (:func:`~..tilt.cumulant_gap`), u = c − K_x − δ = log(π_t/ρ)."""
  pos = rho > 0
  c = dev * t
  delta = t * dev_mass
  gap, _ = cumulant_gap(rho, c, pos, delta=delta, top=t * dev_top)
  u = jnp.where(pos, c - (gap + delta), 0.0)
  return gap, jnp.sum(jnp.where(pos, rho * jnp.expm1(u) * dev, 0.0))


def _prompt_root_terms(d, rho, r, t):
  """Per-prompt (h_x, h_x', S_x) at t = 1/β for h_x(t) = log E_ρ e^{t r} − t E_d r (convex in t).

  h_x = K_x(t) − t (E_d r − E_ρ r) with K_x the cumulant gap of the tilt of ρ at β = 1/t
  (:func:`~..tilt.cumulant_gap`: log1p form, full precision for small t and near ties;
  max-shifted only where e^{t (r − E_ρ r)} would overflow), and E_d r − E_ρ r = Σ (d − ρ) r.
  h_x' = E_{π_t} r − E_d r = Σ ρ (e^u − 1)(r − E_ρ r) − (E_d r − E_ρ r), u = t(r − E_ρ r) − K_x
  = log(π_t/ρ), π_t the Gibbs tilt at β = 1/t. S_x = K + max|c| + t Σ |d − ρ||r| is the error
  scale of h_x. Only what Newton needs is computed: h' steers its steps and certifies the last
  one, to a relative error of about u·max|c|.
  """
  dev, dev_mass, dev_top, dev_abs, gain, gain_scale = _root_invariants(d, rho, r)
  gap, rise = _root_terms_at(rho, dev, dev_mass, dev_top, t)
  return gap - t * gain, rise - gain, gap + t * (dev_abs + gain_scale)


def scaled_c1(inst: Instance, log_beta: jax.Array) -> jax.Array:
  """g(β) = β C₁(β; ρ) = E_w[β log E_ρ e^{r/β} − E_d r] at β = exp(log_beta), non-increasing.

  Computed as β·h(1/β) with h of ``_prompt_root_terms`` (full precision for large β too).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> round(float(scaled_c1(inst, jnp.asarray(0.0))), 6)  # β C₁ at β = 1: log(¾ + ¼e) − ½
    -0.142626
  """
  xs = (inst.data, inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0))
  beta = jnp.exp(log_beta)
  h_x, _, _ = jax.vmap(lambda d, rho, r: _prompt_root_terms(d, rho, r, 1.0 / beta))(*xs)
  return beta * expect(inst, h_x)


def _weigher(inst: Instance):
  """t [X] -> Σ_x w_x t_x over the prompts with w > 0 (others' terms never enter, NaN or not)."""
  w = inst.prompt_weights
  return lambda t: jnp.sum(jnp.where(w > 0, w * jnp.where(w > 0, t, 0.0), 0.0))


def _headroom(d, rho, r):
  """Σ_{supp d} d (max_{supp ρ} r − r) of one prompt: non-negative terms, exactly 0 when d sits on
  the maximisers of r."""
  top = jnp.max(jnp.where(rho > 0, r, -jnp.inf))
  return jnp.sum(jnp.where(d > 0, d * (top - r), 0.0))


def _root_exists(inst: Instance, gain, gain_scale, headroom) -> jax.Array:
  """[] whether β_c exists: the gain Σ_x w Σ_y (d − ρ) r is positive beyond its rounding bound
  and d is not concentrated on the maximisers (the weighted :func:`_headroom` is 0 then)."""
  return (gain > rounding_slack(gain_scale, entries(inst))) & (headroom > 0)


def _has_root(inst: Instance) -> jax.Array:
  """[] whether β_c exists (:func:`_root_exists`), from the rows alone (no Newton)."""
  def row(d, rho, r):
    *_, gain, gain_scale = _root_invariants(d, rho, r)  # XLA drops the unused invariants
    return gain, gain_scale, _headroom(d, rho, r)

  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  gain, scale, headroom = jax.vmap(row)(inst.data, inst.reference, r)
  weigh = _weigher(inst)
  return _root_exists(inst, weigh(gain), weigh(scale), weigh(headroom))


def critical_beta_from_terms(inst: Instance, map_rows) -> jax.Array:
  r"""D1 (ours): β_c with C₁(β_c; ρ) = 0, or NaN when there is none, by Newton's method.

  With t = 1/β, C₁ = h(t)/t where h(t) = E_w[log E_ρ e^{t r} − t E_d r] is convex (a cumulant
  generating function minus a line), h(0) = 0 and h'(0) = E_w E_ρ r − E_w E_d r. A positive root
  exists iff E_w E_d r > E_w E_ρ r (beyond its rounding bound) and d is not concentrated on the
  maximisers of r; then it is
  unique, C₁ < 0 exactly for β > β_c, and Newton's method started to the right of the root
  converges monotonically to it (a step that rounding lands left of the root is followed by one
  back to its right); it stops when the step is below ``NEWTON_RTOL`` t or h is at its rounding
  level. The start t_up = −E_w log ρ(M_x) / E_w[max r − E_d r] (M_x the
  maximisers of r on supp ρ_x) satisfies h(t_up) ≥ 0, because log E_ρ e^{t r} ≥ t max r + log ρ(M).

  Args:
    inst: instance (its own β is ignored).
    map_rows: ``map_rows(fn, *xs)`` applies ``fn`` to the rows of arrays ``xs`` [X, ...] (vmap,
      or a chunked map for large instances) and returns the stacked results.

  Returns:
    [] β_c, NaN if there is no root, it lies outside ``LOG_BETA_BRACKET``, or Newton ended
    where it cannot certify a root (see the end of the function).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> beta_c = critical_beta_from_terms(inst, lambda fn, *xs: jax.vmap(fn)(*xs))
    >>> round(float(beta_c), 6)  # 1/(2 log 3): log(¾ + ¼ e^{1/β}) = 1/(2β) at e^{1/(2β)} = 3
    0.45512
  """
  dtype = inst.reward.dtype
  weigh = _weigher(inst)

  def start_terms(d, rho, r):
    pos = rho > 0
    top = jnp.max(jnp.where(pos, r, -jnp.inf))
    mass_top = jnp.sum(jnp.where(pos & (r == top), rho, 0.0))
    headroom = _headroom(d, rho, r)
    invariants = _root_invariants(d, rho, r)
    var_rho = jnp.sum(jnp.where(pos, rho * invariants[0] ** 2, 0.0))
    return (-jnp.log(mass_top), headroom, var_rho), invariants

  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  (neg_log_mass, headroom, var), invariants = map_rows(start_terms, inst.data, inst.reference, r)
  dev, dev_mass, dev_top, dev_abs, gain_x, gain_scale_x = invariants
  headroom, var, gain = weigh(headroom), weigh(var), weigh(gain_x)
  slope_scale = weigh(dev_abs) + weigh(gain_scale_x)
  exists = _root_exists(inst, gain, weigh(gain_scale_x), headroom)
  t_up = jnp.where(exists, weigh(neg_log_mass) / jnp.where(exists, headroom, 1.0), 1.0)
  t_up = jnp.maximum(t_up, jnp.exp(-LOG_BETA_BRACKET[1]))  # h(t_up) ≥ 0 also when mass_top = 1

  def h_and_slope(t):
    """(h, h', S_h) at t (as :func:`_prompt_root_terms`, weighted; the invariants hoisted)."""
    gap_x, rise_x = map_rows(lambda *row: _root_terms_at(*row, t), inst.reference, dev,
                             dev_mass, dev_top)
    gap = weigh(gap_x)
    return gap - t * gain, weigh(rise_x) - gain, gap + t * slope_scale

  # Often much closer: the root of the quadratic model −gain·t + Var·t²/2. Newton starts there:
  # right of the root (h ≥ 0) it descends monotonically; left of it but already rising, the
  # tangent's zero lies right of the root (convexity); left of the minimum, it jumps to t_up.
  # No step goes beyond t_up (h(t_up) ≥ 0, so the root is below it).
  t_quad = jnp.clip(2.0 * gain / jnp.where(var > 0, var, 1.0), jnp.exp(-LOG_BETA_BRACKET[1]), t_up)

  def cond(state):
    # Stops where h is rounding or where Newton's next step would be below its tolerance (both
    # certify the root below), or after a step that moved nothing.
    t, step, it, (h, dh, scale) = state
    resolved = jnp.abs(h) > rounding_slack(scale, entries(inst))
    tiny_next = (dh > 0) & (jnp.abs(h) <= NEWTON_RTOL * t * dh)
    return (exists & (it < NEWTON_MAX_STEPS) & (jnp.abs(step) > NEWTON_RTOL * t) & resolved
            & ~tiny_next)

  def body(state):
    t, _, it, (h, dh, scale) = state
    # Stop where h is rounding: the root is as exact as h can be evaluated.
    resolved = jnp.abs(h) > rounding_slack(scale, entries(inst))
    newton = jnp.clip(t - h / jnp.where(dh > 0, dh, 1.0), 1e-6 * t, 1e6 * t)
    # Monotone from the right by convexity; rounding can land a step left of the root, whence
    # the next (convex) Newton step returns to its right: steps may grow t, by a bounded factor.
    nxt = jnp.where(~resolved, t, jnp.where(dh > 0, jnp.minimum(newton, t_up),
                                            jnp.where(h < 0, t_up, t)))
    return nxt, nxt - t, it + 1, h_and_slope(nxt)

  # Every evaluation of h happens once, at the point the state holds (the last one certifies).
  state = (t_quad.astype(dtype), jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32),
           h_and_slope(t_quad.astype(dtype)))
  t, _, _, (h_end, dh_end, scale_end) = jax.lax.while_loop(cond, body, state)
  # Certified only where the loop ended at a root: h is rounding there, or Newton's next step
  # (h/h', with h' > 0) is below its tolerance. Otherwise (h' ≤ 0 where rounding swamps the
  # slope, or the step budget spent) no β_c is given rather than a wrong one.
  certified = ((jnp.abs(h_end) <= rounding_slack(scale_end, entries(inst)))
               | ((dh_end > 0) & (jnp.abs(h_end) <= 2.0 * NEWTON_RTOL * t * dh_end)))
  log_beta = -jnp.log(t)
  inside = (log_beta > LOG_BETA_BRACKET[0]) & (log_beta < LOG_BETA_BRACKET[1])
  return jnp.where(exists & inside & certified, jnp.exp(log_beta), jnp.nan)


def beta_critical(inst: Instance) -> jax.Array:
  """D1 (ours): β_c with C₁(β_c; ρ) = 0, NaN when none (see ``critical_beta_from_terms``).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> import jax
    >>> round(float(jax.jit(beta_critical)(inst)), 6)  # 1/(2 log 3) (see critical_beta_from_terms)
    0.45512
  """
  return critical_beta_from_terms(inst, lambda fn, *xs: jax.vmap(fn)(*xs))


def batch_beta_critical(batch: Instance, chunk: int) -> jax.Array:
  """:func:`beta_critical` of every instance of a batch [B, X, Y], ``chunk`` instances at a time.

  A chunk's Newton iterates until its slowest instance has converged, and an instance without a
  root costs a chunk as much as one with. So the instances with a root are put first (a stable
  sort on :func:`_has_root`), each chunk is one vmapped Newton, and a chunk with no root skips
  it (``lax.cond``). Each instance's β_c is its own Newton's, as in :func:`beta_critical`, up to
  where the chunk's slowest instance stops it (within ``NEWTON_RTOL``).

  Args:
    batch: instances with a leading batch axis [B, X, Y].
    chunk: instances per vmapped Newton (at least 1).

  Returns:
    [B] β_c, NaN where there is none.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance, stack
    >>> one = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> none = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)  # ρ = d: no gain, no root
    >>> [round(float(b), 6) for b in batch_beta_critical(stack([none, one, none]), chunk=2)]
    [nan, 0.45512, nan]
  """
  if chunk < 1:
    raise ValueError(f"chunk must be at least 1 instance, got {chunk}")
  size = int(jax.tree.leaves(batch)[0].shape[0])
  if size == 0:
    return jnp.zeros((0,), batch.reward.dtype)
  chunk = min(int(chunk), size)
  n_chunks = -(-size // chunk)
  has_root = jax.vmap(_has_root)(batch)
  order = jnp.argsort(~has_root, stable=True)  # roots first, then the others, each in order
  # The last chunk is filled with the batch's last instance in that order (it is recomputed).
  index = jnp.concatenate([order, jnp.full((n_chunks * chunk - size,), order[-1], order.dtype)])
  chunks = jax.tree.map(lambda x: x[index].reshape(n_chunks, chunk, *x.shape[1:]), batch)
  flags = has_root[index].reshape(n_chunks, chunk)
  dtype = batch.reward.dtype

  def one_chunk(args):
    insts, any_root = args
    return jax.lax.cond(any_root, jax.vmap(beta_critical),
                        lambda _: jnp.full((chunk,), jnp.nan, dtype), insts)

  roots = jax.lax.map(one_chunk, (chunks, jnp.any(flags, axis=1))).reshape(-1)[:size]
  return jnp.zeros((size,), dtype).at[order].set(roots, unique_indices=True)


def _c1_slack(inst: Instance) -> jax.Array:
  """[] rounding slack of C₁(β; ρ) at the instance's β."""
  return rounding_slack(expect(inst, c1_scale(inst)), entries(inst))


def _root_terms(inst: Instance, bc: jax.Array):
  """(h, h', S_h) at t = 1/β_c, weighted over prompts."""
  xs = (inst.data, inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0))
  h_x, dh_x, s_x = jax.vmap(lambda d, rho, r: _prompt_root_terms(d, rho, r, 1.0 / bc))(*xs)
  return expect(inst, h_x), expect(inst, dh_x), expect(inst, s_x)


def _log_beta_error(inst: Instance, bc: jax.Array) -> jax.Array:
  """Error of log β_c: the root is known to δt/t = γ_N S_h / (t |h'(t)|) (h is evaluated to
  γ_N S_h), plus the Newton tolerance (2 NEWTON_RTOL) and the rounding of −log t."""
  _, dh, scale = _root_terms(inst, bc)
  t = 1.0 / bc
  cond = jnp.where(jnp.abs(dh) > 0, rounding_slack(scale, entries(inst))
                   / (t * jnp.where(jnp.abs(dh) > 0, jnp.abs(dh), 1.0)), jnp.inf)
  return cond + 2.0 * NEWTON_RTOL + 2.0 * unit_roundoff(bc.dtype) * (1.0 + jnp.abs(jnp.log(bc)))


def critical_beta_root(inst: Instance) -> Verdict:
  """D1 (ours): at β_c, β_c C₁(β_c; ρ) = 0 (applies when β_c exists).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> import jax
    >>> v = jax.jit(critical_beta_root)(inst)
    >>> bool(v.applies), float(v.margin) >= -float(v.slack)  # β_c exists and is a root
    (True, True)
  """
  bc = beta_critical(inst)
  exists = jnp.isfinite(bc)
  safe_bc = jnp.where(exists, bc, 1.0)
  g = scaled_c1(inst, jnp.log(safe_bc))
  at_root = dataclasses.replace(inst, beta=safe_bc)
  slope = expect(at_root, kl_rows(gibbs_tilt(at_root), safe_log(at_root.reference)))
  _, _, scale_h = _root_terms(inst, safe_bc)
  # g = β h: h is rounding at the root (Newton stops there) or within the Newton tolerance.
  slack = (safe_bc * rounding_slack(scale_h, entries(inst))
           + slope * safe_bc * (2.0 * NEWTON_RTOL + 2.0 * unit_roundoff(bc.dtype)))
  # Scale: the terms of g are of the size of the rewards.
  scale = jnp.maximum(1.0, jnp.max(jnp.abs(inst.reward)))
  return Verdict(g, jnp.zeros(()), -jnp.abs(g) / scale, exists, jnp.full((), jnp.nan),
                 jnp.where(exists, slack / scale, 0.0))


def critical_beta_sign(inst: Instance) -> Verdict:
  """D1 (ours): exact RL lowers the SFT loss (C₁ < 0) iff β > β_c.

  margin = (log β_c − log β) · βC₁(β) ≥ 0 at the instance's β (applies when β_c exists).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = critical_beta_sign(inst)
    >>> float(v.margin) >= -float(v.slack)  # C₁ < 0 iff β > β_c
    True
  """
  bc = beta_critical(inst)
  exists = jnp.isfinite(bc)
  safe_bc = jnp.where(exists, bc, 1.0)
  gap = jnp.log(safe_bc) - jnp.log(inst.beta)
  scaled = inst.beta * c1(inst)
  value = gap * scaled
  err_log = _log_beta_error(inst, safe_bc) + unit_roundoff(bc.dtype) * jnp.abs(jnp.log(inst.beta))
  slack = (jnp.abs(gap) * inst.beta * _c1_slack(inst) + jnp.abs(scaled) * err_log
           + rounding_slack(4.0 * jnp.abs(value), entries(inst)))
  return at_least(value, jnp.zeros(()), jnp.where(exists, slack, 0.0), applies=exists)._replace(
      ratio=jnp.full((), jnp.nan))


def rl_lowers_sft_needs_reward_gain(inst: Instance) -> Verdict:
  """D1 (ours), necessary condition: C₁(β; ρ) < 0 ⇒ E_w E_d r > E_w E_ρ r (strict).

  Applies where C₁ < 0 beyond its rounding slack; gain = Σ_x w Σ_y (d − ρ) r (exactly 0 at ρ = d).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = rl_lowers_sft_needs_reward_gain(inst)
    >>> bool(v.applies), float(v.margin) >= -float(v.slack)  # E_d r = ½ > E_ρ r = ¼
    (True, True)
  """
  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  diff = jnp.where((inst.data > 0) | (inst.reference > 0), inst.data - inst.reference, 0.0)
  gain = expect(inst, jnp.sum(diff * r, axis=-1))
  slack = rounding_slack(expect(inst, jnp.sum(jnp.abs(diff * r), axis=-1)), entries(inst))
  return positive(gain, slack, applies=c1(inst) < -_c1_slack(inst))
