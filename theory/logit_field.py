r"""The tabular logit field θ̇ = −a ∇L + b ∇J_β(·; ρ), its Jacobian and fast linear solves.

Per prompt x, with π = softmax(θ_x) on the RL support S_x (real responses with ρ > 0) and
h = r − β log(π/ρ) (THEORY.md B5):

  f_x(θ) = w_x [ b π ⊙ (h − ⟨π, h⟩) − a (π − d) ].

The field depends on θ only through π (adding a constant to a row changes nothing) and keeps the
row sums Σ_{y∈S} θ_y fixed. Its Jacobian is block-diagonal, one symmetric |Y| × |Y| block per
prompt, a diagonal plus a rank-2 matrix:

  J_x = w_x [ diag(c) − c πᵀ − π cᵀ − κ π πᵀ ],  c = π ⊙ (b (h − ⟨π, h⟩) − κ),  κ = a + b β,

so (I − g J_x) x = v is solved in O(|Y|) with the Woodbury identity (a 2 × 2 system per prompt)
instead of an O(|Y|³) factorisation. Its spectral radius is at most of the order of
max_x w_x (|a| + |b| (β + osc r)) (:func:`stiffness_rate`): an explicit solver needs that many
steps per unit time, which is what makes large β (and large rewards, and very unequal prompt
weights) stiff.

:class:`LogitSystem` is the field as the integrators of theory/integrators.py see it: logits in a
gauge where every row's largest supported logit is 0 (the state is log π up to a per-row constant
of at most log |Y|, so exp never overflows; tolerances still see the logits of the ODE's own
gauge, where each row's mean over the support is conserved: :meth:`LogitSystem.magnitudes`), and
entries off the support held at ``OFF_SUPPORT`` (exp underflows to 0 there, so the hot loop needs no
masks). The reward enters centred per prompt (r − (max r + min r)/2 over S_x, exact by Sterbenz),
so a large constant offset in r costs no precision.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 (the flows' objectives);
  Hager, "Updating the inverse of a matrix", SIAM Review 31 (1989) (Woodbury identity).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import objectives as obj
from .instance import Instance

__all__ = ["OFF_SUPPORT", "vector_field", "stiffness_rate", "natural_time", "LogitSystem",
           "logit_system"]

OFF_SUPPORT = -1e4  # internal logit of entries off the RL support: exp(−1e4) = 0 in float64


def vector_field(inst: Instance, theta: jax.Array, sft_weight, rl_weight,
                 log_reference: jax.Array | None = None) -> jax.Array:
  r"""θ̇ = −a ∇L(θ) + b ∇J_β(θ; ρ) with ρ = ``inst.reference`` (closed forms, B5).

  .. math:: \dot\theta_x = w_x\big[b\,\pi_x\odot(h_x - \langle\pi_x, h_x\rangle)
            - a(\pi_x - d_x)\big],\quad h_x = r_x - \beta\log(\pi_x/\rho_x)

  Args:
    inst: instance whose ``reference`` is the RL reference of this phase.
    theta: [X, Y] logits (any finite values off the RL support; they are ignored).
    sft_weight: a, the weight of the SFT descent direction.
    rl_weight: b, the weight of the RL ascent direction.
    log_reference: [X, Y] log ρ (default: computed from ``inst.reference``).

  Returns:
    [X, Y] time derivative of the logits (0 off the RL support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> [round(float(v), 4) for v in vector_field(inst, jnp.zeros((1, 2)), 0.0, 1.0)[0]]
    [-0.25, 0.25]
  """
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


def _reward_oscillation(inst: Instance) -> jax.Array:
  """[X] max − min of r over each prompt's RL support (0 on an empty row)."""
  support = obj.rl_support(inst)
  r_hi = jnp.max(jnp.where(support, inst.reward, -jnp.inf), axis=-1)
  r_lo = jnp.min(jnp.where(support, inst.reward, jnp.inf), axis=-1)
  return jnp.where(jnp.any(support, axis=-1), r_hi - r_lo, 0.0)


def stiffness_rate(inst: Instance, sft_weight, rl_weight) -> jax.Array:
  r"""The scale of the Jacobian of θ̇ = −a∇L + b∇J_β: max_x w_x (|a| + |b| (β + osc_x r)).

  An explicit solver with a bounded stability region needs O(T · rate) steps to reach time T;
  :mod:`.flows` switches to the implicit solver when T · rate is large.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([0.5, 0.5], [[0.5, 0.5]] * 2, [[0.0, 1.0], [0.0, 3.0]], 1e6)
    >>> float(stiffness_rate(inst, 0.0, 1.0))  # 0.5 · (1e6 + 3)
    500001.5
  """
  w = inst.prompt_weights
  per_x = w * (jnp.abs(sft_weight) + jnp.abs(rl_weight) * (inst.beta + _reward_oscillation(inst)))
  return jnp.max(jnp.where(w > 0, per_x, 0.0))


def natural_time(inst: Instance) -> jax.Array:
  r"""The fastest time scale of the RL flow: 1 / (max_x w_x (β + max_x osc_y r)).

  The Jacobian of ∇J_β in logits is bounded by w_x(β + osc r) per prompt (up to a constant), so
  an explicit solver needs O(T / natural_time) steps to reach time T.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(natural_time(inst))
    0.5
  """
  osc = jnp.max(jnp.where(inst.prompt_weights > 0, _reward_oscillation(inst), 0.0))
  return 1.0 / (jnp.max(inst.prompt_weights) * (inst.beta + osc))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LogitSystem:
  r"""θ̇ = −a∇L + b∇J_β(·; ρ) of one phase, precomputed for the integrators (module docstring).

  In the internal gauge the field is, per row, with e = exp θ, z = Σ e, q = b (r̃ − β(θ − log ρ))
  (r̃ the centred reward) and s = Σ e q:

  .. math:: f(\theta) = \frac{w}{z}\, e \odot \Big(q - \frac{s}{z} - a\Big) + w\,a\,d

  (β log z and the centring constant cancel in q − s/z, so neither is computed).

  Attributes:
    weight: [X, 1] prompt weights w.
    reward: [X, Y] b · centred reward on the support (0 off it).
    log_reference: [X, Y] log ρ on the support (0 off it).
    rl_beta: [] b β.
    sft_weight: [] a.
    kappa: [] a + b β.
    sft_target: [X, Y] w a d.
    support: [X, Y] bool RL support.
  """

  weight: jax.Array
  reward: jax.Array
  log_reference: jax.Array
  rl_beta: jax.Array
  sft_weight: jax.Array
  kappa: jax.Array
  sft_target: jax.Array
  support: jax.Array

  def to_internal(self, theta: jax.Array) -> jax.Array:
    """[X, Y] logits (any gauge) -> the internal gauge (row max 0 on S, OFF_SUPPORT off S)."""
    masked = jnp.where(self.support, theta, -jnp.inf)
    peak = jnp.max(masked, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    return jnp.where(self.support, theta - peak, OFF_SUPPORT)

  def magnitudes(self, theta0: jax.Array, theta1: jax.Array, mean0: jax.Array):
    """|θ| at a step's start and end in the ODE's own gauge, for the tolerances.

    The ODE keeps each row's mean over S at ``mean0``; the internal gauge differs from it by a
    per-row shift, the same at both ends of a step (the field has zero row sums).
    """
    shift = mean0 - self.row_mean(theta0)
    return jnp.abs(theta0 + shift), jnp.abs(theta1 + shift)

  def row_mean(self, theta: jax.Array) -> jax.Array:
    """[X, 1] mean of θ over each row's support."""
    count = jnp.maximum(jnp.sum(self.support, axis=-1, keepdims=True), 1)
    return jnp.sum(jnp.where(self.support, theta, 0.0), axis=-1, keepdims=True) / count

  def normalise(self, theta: jax.Array) -> jax.Array:
    """Re-gauges after a step: subtracts each row's largest supported logit."""
    peak = jnp.max(theta, axis=-1, keepdims=True)  # attained on S: off-S entries are −1e4
    return jnp.where(self.support, theta - peak, theta)

  def _parts(self, theta, centred: bool):
    e = jnp.exp(theta)
    q = self.reward - self.rl_beta * (theta - self.log_reference)
    if centred:
      # q minus its value at the row's largest logit: then s / z = Σ π q is a sum of terms that
      # carry their own (small) probabilities, and q − s/z keeps full relative precision even
      # when |r| ≫ the advantage (|r| up to 1e12 in the domain).
      top = jnp.argmax(theta, axis=-1, keepdims=True)
      q = q - jnp.take_along_axis(q, top, axis=-1)
    z = jnp.sum(e, axis=-1, keepdims=True)
    s = jnp.sum(e * q, axis=-1, keepdims=True)
    return e, q, z, s

  def field(self, theta: jax.Array, _args=None) -> jax.Array:
    """The field f(θ) in the internal gauge (signature (y, args) of theory/integrators.py).

    The fast form for the explicit solver: it is used only where T · :func:`stiffness_rate` is
    small, where the rounding of q − s/z (~1e-16 |r|) stays far below the tolerance.
    """
    e, q, z, s = self._parts(theta, centred=False)
    return (self.weight / z) * e * (q - s / z - self.sft_weight) + self.sft_target

  def precise_field(self, theta: jax.Array, _args=None) -> jax.Array:
    """f(θ) with q centred at each row's top entry: full relative precision for any |r| / β.

    The implicit solver, which runs where rewards or β are large, uses this form.
    """
    e, q, z, s = self._parts(theta, centred=True)
    return (self.weight / z) * e * (q - s / z - self.sft_weight) + self.sft_target

  def linearise(self, theta: jax.Array, _args=None):
    """(f(θ), (π, c, κ, w), hγ cap): the field and its Jacobian's diag + rank-2 form.

    The cap keeps D = 1 − hγ w c >= 1/2 (the Woodbury solve needs D invertible): where c > 0
    the flow locally grows, and steps that large would not be accurate anyway.
    """
    e, q, z, s = self._parts(theta, centred=True)
    pi = e / z
    advantage = q - s / z
    f = self.weight * pi * (advantage - self.sft_weight) + self.sft_target
    c = pi * (advantage - self.kappa)
    growth = jnp.max(self.weight * jnp.maximum(c, 0.0))
    cap = jnp.where(growth > 0, 0.5 / jnp.where(growth > 0, growth, 1.0), jnp.inf)
    return f, (pi, c, self.kappa, self.weight), cap

  @staticmethod
  def solve(jac, hg, v: jax.Array) -> jax.Array:
    r"""x with (I − hg J) x = v, per prompt by the Woodbury identity (O(|Y|)).

    With g = hg·w, D = 1 − g c, P = [c, π] and S = g [[0, 1], [1, κ]]:
    I − hg J = D + P S Pᵀ, so x = D⁻¹v − D⁻¹P (I + S PᵀD⁻¹P)⁻¹ S PᵀD⁻¹v.
    """
    pi, c, kappa, w = jac
    g = hg * w
    d = 1.0 - g * c
    dc, dp, dv = c / d, pi / d, v / d
    q11 = jnp.sum(c * dc, axis=-1, keepdims=True)
    q12 = jnp.sum(pi * dc, axis=-1, keepdims=True)
    q22 = jnp.sum(pi * dp, axis=-1, keepdims=True)
    u1 = jnp.sum(c * dv, axis=-1, keepdims=True)
    u2 = jnp.sum(pi * dv, axis=-1, keepdims=True)
    k11 = 1.0 + g * q12
    k12 = g * q22
    k21 = g * (q11 + kappa * q12)
    k22 = 1.0 + g * (q12 + kappa * q22)
    t1 = g * u2
    t2 = g * (u1 + kappa * u2)
    det = k11 * k22 - k12 * k21
    m1 = (k22 * t1 - k12 * t2) / det
    m2 = (k11 * t2 - k21 * t1) / det
    return dv - m1 * dc - m2 * dp


def logit_system(inst: Instance, sft_weight, rl_weight) -> LogitSystem:
  """The :class:`LogitSystem` of θ̇ = −a∇L + b∇J_β(·; inst.reference).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> system = logit_system(inst, 0.0, 1.0)
    >>> theta = system.to_internal(jnp.zeros((1, 2)))
    >>> [round(float(v), 4) for v in system.field(theta)[0]]  # = vector_field at θ = 0
    [-0.25, 0.25]
  """
  dtype = inst.reward.dtype
  a = jnp.asarray(sft_weight, dtype)
  b = jnp.asarray(rl_weight, dtype)
  support = obj.rl_support(inst)
  r_hi = jnp.max(jnp.where(support, inst.reward, -jnp.inf), axis=-1, keepdims=True)
  r_lo = jnp.min(jnp.where(support, inst.reward, jnp.inf), axis=-1, keepdims=True)
  centre = jnp.where(jnp.isfinite(r_hi), 0.5 * r_hi + 0.5 * r_lo, 0.0)
  w = inst.prompt_weights[:, None]
  return LogitSystem(
      weight=w,
      reward=jnp.where(support, b * (inst.reward - centre), 0.0),
      log_reference=jnp.log(jnp.where(support, inst.reference, 1.0)),
      rl_beta=b * inst.beta,
      sft_weight=a,
      kappa=a + b * inst.beta,
      sft_target=jnp.where(support, w * a * inst.data, 0.0),
      support=support)
