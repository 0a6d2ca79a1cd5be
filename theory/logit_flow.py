r"""One logit gradient flow θ̇ = −a ∇L + b ∇J_β(·; ρ), integrated right over the whole valid domain.

The field, its Jacobian and the per-prompt linear solves are in theory/logit_field.py; the
solvers in theory/integrators.py. Each solve picks its solver from the stiffness bound T · rate,
rate = max_x w_x (|a| + |b|(β + osc r)) (:func:`~.logit_field.stiffness_rate`): up to
``EXPLICIT_LIMIT`` the explicit Dormand–Prince 5(4), cheapest per step; beyond it the L-stable
Rosenbrock method Rodas5P, whose linear systems are solved per prompt in O(|Y|). So β from 1e-6
to 1e6 and |r|/β up to 1e6 integrate in a bounded number of steps (an explicit solver would need
~T · rate of them: 1e12 at the corner β = 1e6, |r|/β = 1e6). Both solvers control the error of
the logits in a gauge where each row's largest logit is 0, i.e. of the log-probabilities, with
the RMS norm over the real entries. A solve that runs out of its step budget returns ``ok``
False and NaN where it did not reach: never a number that looks like a result.

With concrete (not traced) inputs, "auto" is decided before compiling, so only the solver that
runs is compiled; under jit or vmap both are compiled and each solve decides in the graph (the
other loop exits at once).

References:
  Hairer, Wanner, "Solving Ordinary Differential Equations II" (1996), IV.2 (stiffness), IV.7
  (Rosenbrock methods); Steinebach, BIT Numer. Math. 63 (2023) (Rodas5P).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .instance import Instance
from .integrators import Linearisation, Solution, dopri5, rodas5p
from .logit_field import LogitSystem, logit_system, stiffness_rate
from .objectives import initial_logits

__all__ = ["METHODS", "EXPLICIT_LIMIT", "DEFAULT_MAX_STEPS", "integrate", "FlowSolution",
           "solve_logit_system", "resolve_method", "flow_solution", "flow", "sft_flow",
           "rl_flow"]

METHODS = ("auto", "explicit", "implicit")
# T · stiffness_rate above which a solve is stiff: Dormand–Prince would need more than about
# EXPLICIT_LIMIT / 3.3 steps for stability alone, and Rodas5P is cheaper (measured in
# bench/bench_flows.py).
EXPLICIT_LIMIT = 300.0
DEFAULT_MAX_STEPS = 1 << 16  # per solve (per phase of a pipeline), accepted + rejected


def integrate(field, y0, ts, args, *, t0=0.0, rtol=1e-8, atol=1e-10, max_steps=DEFAULT_MAX_STEPS,
              linearisation: Linearisation | None = None):
  """Integrates ẏ = field(y, args) from t0, saving at ``ts`` (theory/integrators.py).

  Explicit Dormand–Prince 5(4) by default; with a ``linearisation`` (e.g.
  ``integrators.dense_linearisation(field)``) the L-stable Rodas5P, for stiff fields.

  Args:
    field: callable (y, args) -> ẏ (any pytree y).
    y0: initial state.
    ts: [T] save times, monotone, on the side of t0 the integration runs to (Rodas5P: forwards).
    args: pytree passed to ``field``.
    t0: start time.
    rtol, atol: tolerances of the RMS error norm.
    max_steps: step budget; running out is reported, not raised.
    linearisation: Jacobian and linear solve of ``field`` (selects Rodas5P).

  Returns:
    (ys with a leading [T] axis, NaN at saves not reached; ok: [] bool, True when the solver
    reached ts[-1]).

  Examples:
    >>> import jax.numpy as jnp
    >>> ys, ok = integrate(lambda y, a: a * y, jnp.ones(1), jnp.array([1.0]), -1.0)
    >>> round(float(ys[0, 0]), 8), bool(ok)
    (0.36787944, True)
  """
  kw = dict(t0=t0, rtol=rtol, atol=atol, max_steps=max_steps)
  if linearisation is None:
    sol = dopri5(field, y0, ts, args, **kw)
  else:
    sol = rodas5p(field, linearisation, y0, ts, args, **kw)
  return sol.ys, sol.ok


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlowSolution:
  """One integrated logit flow.

  Attributes:
    thetas: [T, X, Y] logits at the save times (the ODE's own gauge: Σ_{y∈S} θ_y is conserved);
      NaN where the solve did not reach.
    ok: [] bool, the last save time was reached.
    t: [] time reached.
    accepted, rejected: [] int32 step counts.
    stiff: [] bool, the implicit solver (Rodas5P) was used.
  """

  thetas: jax.Array
  ok: jax.Array
  t: jax.Array
  accepted: jax.Array
  rejected: jax.Array
  stiff: jax.Array


def solve_logit_system(system: LogitSystem, theta: jax.Array, taus: jax.Array, rate: jax.Array,
                       mean0: jax.Array, *, rtol, atol, max_steps, method
                       ) -> tuple[Solution, jax.Array]:
  """Integrates one flow from internal-gauge logits to times ``taus`` (> 0) with the chosen solver.

  Args:
    system: the flow (:func:`~.logit_field.logit_system`).
    theta: [X, Y] logits in the system's internal gauge (``system.to_internal``).
    taus: [T] increasing save times > 0.
    rate: [] :func:`~.logit_field.stiffness_rate` of the flow.
    mean0: [X, 1] each row's mean logit over the support in the ODE's own gauge (conserved by
      the flow): tolerances apply to the logits of that gauge, as for any solver run on the ODE.
    rtol, atol, max_steps: solver settings.
    method: "auto", "explicit" or "implicit" (static).

  Returns:
    (:class:`~.integrators.Solution` in the internal gauge, stiff: [] bool).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.logit_field import logit_system, stiffness_rate
    >>> from nondecoupling.theory.objectives import initial_logits
    >>> inst = make_instance([1.0], [[0.25, 0.75]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> system, theta0 = logit_system(inst, 1.0, 0.0), initial_logits(inst)  # the SFT flow
    >>> sol, stiff = solve_logit_system(system, system.to_internal(theta0), jnp.array([50.0]),
    ...                                 stiffness_rate(inst, 1.0, 0.0), system.row_mean(theta0),
    ...                                 rtol=1e-8, atol=1e-10, max_steps=4096, method="auto")
    >>> bool(sol.ok), bool(stiff)
    (True, False)
  """
  real = system.support & (system.weight > 0)
  n = jnp.maximum(jnp.sum(real), 1)
  common = dict(rtol=rtol, atol=atol, max_steps=max_steps, n=n)
  # Explicit: no re-gauging is needed (T · rate <= EXPLICIT_LIMIT bounds how far any logit can
  # move, |Δθ| <= T max|f| <= T · rate, so exp cannot overflow), and the ODE's gauge differs from
  # the internal one by a constant shift.
  shift = mean0 - system.row_mean(theta)
  explicit_kw = dict(common, magnitudes=lambda a, b: (jnp.abs(a + shift), jnp.abs(b + shift)))
  # Implicit: long steps over stiff transients; re-gauge after every step.
  implicit_kw = dict(common, normalise=system.normalise,
                     magnitudes=lambda a, b: system.magnitudes(a, b, mean0))
  if method == "explicit":
    stiff = jnp.asarray(False)
  elif method == "implicit":
    stiff = jnp.asarray(True)
  else:
    stiff = taus[-1] * rate > EXPLICIT_LIMIT
  lin = Linearisation(system.linearise, LogitSystem.solve)
  if method == "explicit":
    return dopri5(system.field, theta, taus, **explicit_kw), stiff
  if method == "implicit":
    return rodas5p(system.precise_field, lin, theta, taus, **implicit_kw), stiff
  # Both loops are compiled; the one not chosen exits at once (under vmap too).
  explicit = dopri5(system.field, theta, taus, enabled=~stiff, **explicit_kw)
  implicit = rodas5p(system.precise_field, lin, theta, taus, enabled=stiff, **implicit_kw)
  return jax.tree.map(lambda i, e: jnp.where(stiff, i, e), implicit, explicit), stiff


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"method is {method!r}, expected one of {', '.join(METHODS)}")


def _restore_gauge(support, theta0, thetas):
  """Shifts internal-gauge logits so each row's support sum equals that of θ₀ (the ODE's gauge)."""
  count = jnp.maximum(jnp.sum(support, axis=-1, keepdims=True), 1)
  mean0 = jnp.sum(jnp.where(support, theta0, 0.0), axis=-1, keepdims=True) / count
  means = jnp.sum(jnp.where(support, thetas, 0.0), axis=-1, keepdims=True) / count
  return jnp.where(support, thetas - means + mean0, theta0)


def _is_concrete(*trees) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _host_stiffness_rates(inst: Instance, sft_weights, rl_weights) -> np.ndarray:
  """:func:`~.logit_field.stiffness_rate` per phase, on the host in NumPy (no dispatch)."""
  w = np.asarray(inst.prompt_weights)
  r = np.asarray(inst.reward)
  support = np.asarray(inst.response_mask) & (np.asarray(inst.reference) > 0)
  osc = np.where(support.any(axis=-1), np.max(np.where(support, r, -np.inf), axis=-1)
                 - np.min(np.where(support, r, np.inf), axis=-1), 0.0)
  beta = float(np.asarray(inst.beta))
  per_x = w * (np.abs(sft_weights)[:, None] + np.abs(rl_weights)[:, None] * (beta + osc))
  return np.max(np.where(w > 0, per_x, 0.0), axis=-1)


def resolve_method(method: str, inst: Instance, spans, sft_weights, rl_weights) -> str:
  """"auto" made static when the inputs are concrete: only the solver(s) needed get compiled.

  ``spans``, ``sft_weights``, ``rl_weights`` are per phase (length and weights a, b).

  Under jit or vmap (traced inputs) it stays "auto" and every solve decides in the graph.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> resolve_method("auto", inst, [10.0], [0.0], [1.0])  # a mild RL flow: the explicit solver
    'explicit'
    >>> resolve_method("auto", make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1e6), [10.0], [0.0], [1.0])
    'implicit'
  """
  _check_method(method)
  if method != "auto" or not _is_concrete(inst, spans, sft_weights, rl_weights):
    return method
  as_row = lambda v: np.ravel(np.asarray(v, np.float64))
  rates = _host_stiffness_rates(inst, as_row(sft_weights), as_row(rl_weights))
  stiff = set((as_row(spans) * rates > EXPLICIT_LIMIT).tolist())
  if stiff == {True}:
    return "implicit"
  if stiff == {False}:
    return "explicit"
  return "auto"


def flow_solution(inst: Instance, ts: jax.Array, sft_weight, rl_weight,
                  theta0: jax.Array | None = None, *, rtol: float = 1e-8, atol: float = 1e-10,
                  max_steps: int = DEFAULT_MAX_STEPS, method: str = "auto") -> FlowSolution:
  r"""θ(t) of θ̇ = −a∇L + b∇J_β(·; inst.reference) from θ₀ (default log ρ), with solver statistics.

  Args:
    inst: instance (its reference is the RL reference).
    ts: [T] increasing save times > 0.
    sft_weight, rl_weight: a and b.
    theta0: [X, Y] initial logits (default :func:`~.objectives.initial_logits`).
    rtol, atol: tolerances on log-probabilities (logits with each row's maximum at 0).
    max_steps: step budget.
    method: "auto" (explicit unless T · :func:`stiffness_rate` > ``EXPLICIT_LIMIT``),
      "explicit" (Dormand–Prince 5(4)) or "implicit" (Rodas5P).

  Returns:
    :class:`FlowSolution`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1e6)  # stiff: β = 1e6
    >>> sol = flow_solution(inst, jnp.array([10.0]), 0.0, 1.0)
    >>> bool(sol.ok), bool(sol.stiff), int(sol.accepted) < 200
    (True, True, True)
  """
  last = np.asarray(ts)[-1:] if _is_concrete(ts) else ts  # only the end of the flow counts
  method = resolve_method(method, inst, last, sft_weight, rl_weight)
  return _flow_solution(inst, ts, sft_weight, rl_weight, theta0, rtol=rtol, atol=atol,
                        max_steps=max_steps, method=method)


@functools.partial(jax.jit, static_argnames=("method",))
def _flow_solution(inst, ts, sft_weight, rl_weight, theta0, *, rtol, atol, max_steps, method):
  theta0 = initial_logits(inst) if theta0 is None else theta0
  dtype = theta0.dtype
  a, b = jnp.asarray(sft_weight, dtype), jnp.asarray(rl_weight, dtype)
  system = logit_system(inst, a, b)
  taus = jnp.asarray(ts, dtype)
  sol, stiff = solve_logit_system(system, system.to_internal(theta0), taus,
                                  stiffness_rate(inst, a, b), system.row_mean(theta0), rtol=rtol,
                                  atol=atol, max_steps=max_steps, method=method)
  thetas = jax.vmap(lambda th: _restore_gauge(system.support, theta0, th))(sol.ys)
  return FlowSolution(thetas=thetas, ok=sol.ok, t=sol.t, accepted=sol.accepted,
                      rejected=sol.rejected, stiff=stiff)


def flow(inst: Instance, ts: jax.Array, sft_weight, rl_weight, theta0: jax.Array | None = None,
         *, rtol: float = 1e-8, atol: float = 1e-10, max_steps: int = DEFAULT_MAX_STEPS,
         method: str = "auto"):
  r"""θ(t) of θ̇ = −a∇L + b∇J_β(·; inst.reference) from θ₀ (default log ρ), at times ``ts``.

  Args:
    inst: instance (its reference is the RL reference).
    ts: [T] increasing save times > 0.
    sft_weight, rl_weight: a and b.
    theta0: [X, Y] initial logits (default :func:`~.objectives.initial_logits`).
    rtol, atol, max_steps, method: solver settings (:func:`flow_solution`).

  Returns:
    (thetas [T, X, Y], ok []).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> from nondecoupling.theory.objectives import policy_log_probs
    >>> th, ok = flow(inst, jnp.array([200.0]), 0.0, 1.0)
    >>> round(float(jnp.exp(policy_log_probs(inst, th[-1]))[0, 1]), 4)  # → π*_β
    0.7311
  """
  sol = flow_solution(inst, ts, sft_weight, rl_weight, theta0, rtol=rtol, atol=atol,
                      max_steps=max_steps, method=method)
  return sol.thetas, sol.ok


def sft_flow(inst, ts, theta0=None, **kw):
  """SFT flow θ̇ = −∇L (see :func:`flow`).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.25, 0.75]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> thetas, ok = sft_flow(inst, jnp.array([50.0]))
    >>> bool(ok), [round(v, 4) for v in jax.nn.softmax(thetas[-1, 0]).tolist()]  # SFT reaches d
    (True, [0.25, 0.75])
  """
  return flow(inst, ts, 1.0, 0.0, theta0, **kw)


def rl_flow(inst, ts, theta0=None, **kw):
  """RL flow θ̇ = ∇J_β(·; inst.reference) (see :func:`flow`).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> thetas, ok = rl_flow(inst, jnp.array([50.0]))
    >>> # RL reaches (1, e)/(1 + e)
    >>> bool(ok), [round(v, 4) for v in jax.nn.softmax(thetas[-1, 0]).tolist()]
    (True, [0.2689, 0.7311])
  """
  return flow(inst, ts, 0.0, 1.0, theta0, **kw)
