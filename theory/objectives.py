r"""Objectives of THEORY.md part A and the exact identities of part B, in log space.

Every function here is unbatched (one instance, arrays [X] / [X, Y]) and pure; callers batch
with ``jax.vmap``. Policies are passed as log-probabilities ``log_pi`` [X, Y] with ``-inf`` where
a response has no mass (padded responses, or outside a support). All reductions over prompts
are weighted by ``prompt_weights`` (padded prompts have weight 0), and ``0 log 0 = 0``.

References:
  Niu, Bai, Han, Zhang, "On the Non-decoupling of Supervised Fine-tuning and Reinforcement
  Learning in Post-training", arXiv 2601.07389 (2026).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._numerics import (
  LOG_NEGLIGIBLE,
  NEG_INF,
  check_rank,
  kl_from_log_ratio,
  masked_dot,
  plogq,
  safe_log,
)
from .instance import Instance
from .tilt import Tilt, log_ratio_to, log_tilt, tilt, tilt_c1_rows

__all__ = [
    "safe_log", "masked_log_softmax", "policy_log_probs", "rl_support", "initial_logits",
    "logits_of", "entropy_rows", "kl_rows", "tv_rows", "expect",
    "sft_loss", "sft_optimum_loss", "sft_excess", "reward", "regularized_reward",
    "gibbs", "log_partition", "gibbs_tilt", "kl_to_gibbs", "rl_value", "c1_rows", "c1",
    "fisher_matvec", "entropy_grad", "sft_grad", "rl_grad",
]


def masked_log_softmax(theta: jax.Array, mask: jax.Array) -> jax.Array:
  r"""log softmax over the last axis restricted to ``mask`` (masked entries are -inf).

  .. math:: \log\pi(y|x) = \theta_{xy} - \log\sum_{y'\in M_x} e^{\theta_{xy'}}

  Args:
    theta: [X, Y] logits.
    mask: [X, Y] bool, True where the response exists.

  Returns:
    [X, Y] log-probabilities.

  Examples:
    >>> import jax.numpy as jnp
    >>> # log ½, log ½, −inf
    >>> masked_log_softmax(jnp.zeros((1, 3)), jnp.array([[True, True, False]])).tolist()
    [[-0.6931471805599453, -0.6931471805599453, -inf]]
  """
  theta = jnp.where(mask, theta, NEG_INF)
  return theta - jax.nn.logsumexp(theta, axis=-1, keepdims=True)


def rl_support(inst: Instance) -> jax.Array:
  """[X, Y] bool: responses the RL side can reach (real and with reference > 0).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[1.0, 0.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> rl_support(inst).tolist()  # ρ > 0 on both responses, although d is not
    [[True, True]]
    >>> rl_support(make_instance([1.0], [[1.0, 0.0]], [[0.0, 1.0]], 1.0)).tolist()  # ρ = d
    [[True, False]]
  """
  return inst.response_mask & (inst.reference > 0)


def policy_log_probs(inst: Instance, theta: jax.Array) -> jax.Array:
  """Tabular softmax policy softmax(theta_x) over the RL support of ``inst``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # softmax(0, log 3)
    >>> jnp.exp(policy_log_probs(inst, jnp.array([[0.0, jnp.log(3.0)]]))).round(6).tolist()
    [[0.25, 0.75]]
  """
  check_rank("theta", theta, 2)
  return masked_log_softmax(theta, rl_support(inst))


def initial_logits(inst: Instance) -> jax.Array:
  r"""θ₀ = log ρ on the RL support, 0 elsewhere (finite everywhere; masked entries are inert).

  Every flow, recipe and trainer starts here: softmax(θ₀) = ρ.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.25, 0.75, 0.0]], [[0.0, 1.0, 2.0]], 1.0)
    >>> theta0 = initial_logits(inst)
    >>> theta0.round(6).tolist()  # log ρ = log d; the response outside supp ρ gets an inert 0
    [[-1.386294, -0.287682, 0.0]]
    >>> jnp.exp(policy_log_probs(inst, theta0)).round(6).tolist()  # softmax(θ₀) = ρ
    [[0.25, 0.75, 0.0]]
  """
  support = rl_support(inst)
  return jnp.where(support, jnp.log(jnp.where(support, inst.reference, 1.0)), 0.0)


def logits_of(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """Finite logits of a policy: log π on the RL support (−745 where π = 0), 0 elsewhere.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> logits_of(inst, jnp.log(jnp.array([[1.0, 0.0]]))).tolist()  # log 1 = 0; π = 0 becomes −745
    [[0.0, -745.0]]
  """
  support = rl_support(inst)
  return jnp.where(support & jnp.isfinite(log_pi), log_pi, jnp.where(support, -745.0, 0.0))


def expect(inst: Instance, per_prompt: jax.Array) -> jax.Array:
  """E_w[f] = sum_x w_x f(x) for f given as [X] (padded prompts have w = 0).

  Uses ``where`` so that an infinite value on a weight-0 prompt does not poison the sum.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([0.25, 0.75], [[0.5, 0.5], [0.5, 0.5]], [[0.0, 1.0], [0.0, 1.0]], 1.0)
    >>> float(expect(inst, jnp.array([4.0, 8.0])))  # ¼·4 + ¾·8
    7.0
  """
  w = inst.prompt_weights
  return jnp.sum(jnp.where(w > 0, w * jnp.where(w > 0, per_prompt, 0.0), 0.0))


def entropy_rows(p: jax.Array) -> jax.Array:
  """[X] Shannon entropies H(p_x) in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> # log 2, ¼ log 4 + ¾ log(4/3)
    >>> entropy_rows(jnp.array([[0.5, 0.5], [0.25, 0.75]])).round(6).tolist()
    [0.693147, 0.562335]
  """
  return -jnp.sum(plogq(p, safe_log(p)), axis=-1)


def kl_rows(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  r"""[X] KL(p_x || q_x) = sum_y p log(p/q), +inf where p puts mass where q has none.

  Computed as :math:`\sum_{p>0} p\,\varphi(\log q - \log p) + q(\{p = 0\})` with
  φ(v) = e^v − 1 − v ≥ 0 (equal to the sum above for distributions): every term is non-negative,
  so the KL is never negative and keeps full relative precision when p ≈ q. Probabilities below
  e^LOG_NEGLIGIBLE (e^−700 ≈ 1e−304) count as p = 0: their terms p φ(v) = q − p(1 + v) differ
  from q by under 1e−300, and kept they reach subnormal numbers whose rounding the gradient
  multiplies by e^v = q/p (a KL gradient of 0.04 where the true one is 1e−83 was seen).

  Args:
    log_p: [X, Y] log-probabilities of p (-inf where p = 0).
    log_q: [X, Y] log-probabilities of q.

  Returns:
    [X] per-prompt KL divergences (nats).

  Examples:
    >>> import jax.numpy as jnp
    >>> p, q = jnp.log(jnp.array([[0.5, 0.5]])), jnp.log(jnp.array([[0.5 + 1e-9, 0.5 - 1e-9]]))
    >>> f"{float(kl_rows(p, q)[0]):.4e}"  # 2 (1e-9)²: the literal sum would give rounding noise
    '2.0000e-18'
  """
  pos = log_p > LOG_NEGLIGIBLE
  mass = jnp.exp(jnp.where(pos, log_p, log_q))  # p on supp p, q off it: one exponential per entry
  ratio = jnp.where(pos, log_q, 0.0) - jnp.where(pos, log_p, 0.0)
  return kl_from_log_ratio(jnp.where(pos, mass, 0.0), ratio, jnp.where(pos, 0.0, mass))


def tv_rows(p: jax.Array, q: jax.Array) -> jax.Array:
  """[X] total variation ½ ||p_x − q_x||_1.

  Examples:
    >>> import jax.numpy as jnp
    >>> tv_rows(jnp.array([[0.5, 0.5]]), jnp.array([[0.75, 0.25]])).tolist()  # ½ (¼ + ¼)
    [0.25]
  """
  return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def sft_loss(inst: Instance, log_pi: jax.Array) -> jax.Array:
  r"""SFT cross-entropy L(π) = E_w[ sum_y d(y|x) (−log π(y|x)) ].

  Args:
    inst: the instance (data d, weights w).
    log_pi: [X, Y] policy log-probabilities.

  Returns:
    [] the loss in nats (+inf if π misses part of supp d).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(sft_loss(inst, jnp.log(inst.data))), 6)  # = log 2
    0.693147

  References: arXiv 2601.07389, Lemma 1 (expectation form).
  """
  check_rank("log_pi", log_pi, 2)
  return expect(inst, -jnp.sum(plogq(inst.data, log_pi), axis=-1))


def sft_optimum_loss(inst: Instance) -> jax.Array:
  """min over tabular policies of L: L(d) = E_w[H(d_x)].

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(sft_optimum_loss(inst)), 6)  # H(½, ½) = log 2
    0.693147
  """
  return expect(inst, entropy_rows(inst.data))


def sft_excess(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """ΔL(π) = L(π) − L(d) = E_w KL(d_x || π_x) (B1), computed as the KL (no cancellation).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # ½ log 2 + ½ log(2/3)
    >>> round(float(sft_excess(inst, jnp.log(jnp.array([[0.25, 0.75]])))), 6)
    0.143841
  """
  return expect(inst, kl_rows(safe_log(inst.data), log_pi))


def reward(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """Unregularised reward J(π) = E_w[ sum_y π(y|x) r(x, y) ] (the paper's Eq. 18).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(reward(inst, jnp.log(jnp.array([[0.25, 0.75]]))))  # ¼·0 + ¾·1
    0.75
  """
  check_rank("log_pi", log_pi, 2)
  return expect(inst, masked_dot(jnp.exp(log_pi), inst.reward))


def gibbs(inst: Instance) -> Tilt:
  r"""The Gibbs tilt of ρ, row by row, in non-cancelling forms (:func:`~.tilt.tilt`).

  Functions below that use it take it as an optional argument ``t``, so that a statement computes
  it once.

  Returns:
    :class:`~.tilt.Tilt` with ``mean`` [X] = E_ρ r, ``centred`` [X, Y] = (r − E_ρ r)/β,
    ``gap`` [X] = K_x = log E_ρ e^{r/β} − E_ρ r/β ≥ 0, ``shift`` [X] (a rounding residue) and
    ``log_ratio`` [X, Y] = log(π*_β/ρ).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> t = gibbs(inst)
    >>> round(float(t.gap[0]), 6)  # K = log E_ρ e^{r/β} − E_ρ r/β = log((1 + e)/2) − ½
    0.120115
    >>> [round(v, 4) for v in jnp.exp(t.log_ratio[0]).tolist()]  # π*/ρ = 2 (1, e)/(1 + e)
    [0.5379, 1.4621]
  """
  return tilt(inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0), inst.beta)


def log_partition(inst: Instance, t: Tilt | None = None) -> jax.Array:
  r"""[X] log Z_β(x) = log sum_y ρ(y|x) exp(r(x,y)/β) = E_ρ r/β + K_x (no overflow for tiny β).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(log_partition(inst)[0]), 6)  # log((1 + e)/2)
    0.620115
  """
  t = gibbs(inst) if t is None else t
  return t.mean / inst.beta + (t.gap + t.shift)


def gibbs_tilt(inst: Instance, t: Tilt | None = None) -> jax.Array:
  r"""log of the KL-regularised RL optimum π*_β = ρ exp(r/β) / Z_β.

  .. math:: \log\pi^*_\beta(y|x) = \log\rho(y|x) + c(x,y) - K_x,
            \quad c = (r - E_{\rho_x} r)/\beta,\ K_x = \log E_{\rho_x} e^{c}

  (the centred form of log ρ + r/β − log Z_β: log(π*/ρ) keeps full precision for large β), and
  at the dominant response y* log π*(y*) = −log1p(Σ_{y≠y*} (ρ_y/ρ_y*) e^{(r_y − r_y*)/β}) (exact
  when π* is nearly one-hot, small β); see :mod:`.tilt`.

  Args:
    inst: instance (reference ρ, reward r, β).

  Returns:
    [X, Y] log-probabilities (-inf where ρ = 0).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> import jax.numpy as jnp
    >>> [round(float(v), 4) for v in jnp.exp(gibbs_tilt(inst))[0]]
    [0.2689, 0.7311]

  References: arXiv 2601.07389 Eq. (8); Peng et al. 2019 (AWR).
  """
  return log_tilt(inst.reference, gibbs(inst) if t is None else t)


def kl_to_gibbs(inst: Instance, log_p: jax.Array, t: Tilt | None = None) -> jax.Array:
  r"""[X] KL(p_x ‖ π*_β,x) from log(π*/p) = (log ρ − log p) + log(π*/ρ), without cancellation.

  The same value as ``kl_rows(log_p, gibbs_tilt(inst))``, but log(π*/p) is never formed as a
  difference of two rounded log-probabilities (:func:`~.tilt.log_ratio_to`): when p ≈ π*, e.g.
  p = ρ = d on a near tie, or p and π* both concentrated on one response at small β, it keeps
  full relative precision (B2: the RL gap is β times this).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> tie = make_instance([1.0], [[0.5, 0.5]], [[0.3, 0.30000001]], 1.0)
    >>> f"{float(kl_to_gibbs(tie, safe_log(tie.data))[0]):.10e}"  # log cosh(5e-9)
    '1.2499999987e-17'
  """
  pos = log_p > LOG_NEGLIGIBLE
  p = jnp.where(pos, jnp.exp(jnp.where(pos, log_p, 0.0)), 0.0)
  t = gibbs(inst) if t is None else t
  ratio = log_ratio_to(inst.reference, t, log_p)
  star = jnp.exp(log_tilt(inst.reference, t))
  return kl_from_log_ratio(p, jnp.where(pos, ratio, 0.0), jnp.where(pos, 0.0, star))


def regularized_reward(inst: Instance, log_pi: jax.Array) -> jax.Array:
  r"""J_β(π; ρ) = J(π) − β E_w[KL(π_x || ρ_x)].

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(regularized_reward(inst, jnp.log(inst.data))), 6)  # π = ρ: no KL, J = ½
    0.5
    >>> round(float(regularized_reward(inst, gibbs_tilt(inst))), 6)  # the maximum, β log((1 + e)/2)
    0.620115
  """
  return reward(inst, log_pi) - inst.beta * expect(inst, kl_rows(log_pi, safe_log(inst.reference)))


def rl_value(inst: Instance, t: Tilt | None = None) -> jax.Array:
  """The RL optimum value J_β(π*_β) = β E_w[log Z_β(x)] = E_w[E_ρ r + β K_x] (B2).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(rl_value(inst)), 6)  # β log((1 + e)/2)
    0.620115
  """
  t = gibbs(inst) if t is None else t
  return expect(inst, t.mean + inst.beta * (t.gap + t.shift))


def c1_rows(inst: Instance, t: Tilt | None = None) -> jax.Array:
  r"""[X] per-prompt C₁: log Z_β(x) − E_{d_x}[r]/β = K_x − (E_d r − E_ρ r)/β, without cancellation.

  K_x = log E_ρ e^{c} ≥ 0 with c = (r − E_ρ r)/β is computed by :func:`~.tilt.tilt` (full
  relative precision on near ties), and E_d r − E_ρ r = Σ_y (d − ρ) r is exactly 0 when ρ = d.
  With ρ = d this is KL(d_x‖π*_x) ≥ 0 to full relative precision. Where π* is nearly one-hot
  (small β) the other exact form Σ_y d log(ρ/π*) is the precise one; the row takes the form with
  the smaller rounding-error estimate (:func:`~.tilt.tilt_c1_rows`).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> c1_rows(inst).round(6).tolist()  # log((1 + e)/2) − ½
    [0.120115]
  """
  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  return tilt_c1_rows(inst.reference, gibbs(inst) if t is None else t, inst.data, r, inst.beta)


def c1(inst: Instance, t: Tilt | None = None) -> jax.Array:
  r"""C₁(β; ρ) = E_w[ log Z_β(x) − E_{d_x}[r]/β ] = L(π*_β) − L(ρ) (B3).

  With ρ = d this is Theorem 3.1's constant, = E_w KL(d_x || π*_x) ≥ 0. Computed per prompt as
  K_x − (E_d r − E_ρ r)/β (:func:`c1_rows`), so that log Z_β and E_d r/β never cancel: near ties
  (r equal on supp d up to 1e-8) keep full relative precision.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(c1(inst)), 6)  # log((1 + e)/2) − 1/2
    0.120115
    >>> tie = make_instance([1.0], [[0.5, 0.5]], [[0.3, 0.30000001]], 1.0)
    >>> f"{float(c1(tie)):.6e}"  # log cosh(5e-9) = 1.25e-17, not 0
    '1.250000e-17'

  References: arXiv 2601.07389, Theorem 3.1 (Eq. 13).
  """
  return expect(inst, c1_rows(inst, t))


def fisher_matvec(pi: jax.Array, v: jax.Array) -> jax.Array:
  r"""F_π v = π ⊙ v − (π·v) π per row, F_π = diag(π) − ππᵀ (the softmax Jacobian).

  Also E_{y∼π}[v(y) ∇_θ log π(y)] for a per-response weight v; entries where π = 0 are ignored
  (v may be ±∞ there).

  Examples:
    >>> import jax.numpy as jnp
    >>> # (0, ½) − ½ (½, ½)
    >>> fisher_matvec(jnp.array([[0.5, 0.5]]), jnp.array([[0.0, 1.0]])).tolist()
    [[-0.25, 0.25]]
  """
  v = jnp.where(pi > 0, v, 0.0)
  return pi * v - pi * jnp.sum(pi * v, axis=-1, keepdims=True)


def entropy_grad(pi: jax.Array, log_pi: jax.Array) -> jax.Array:
  r"""∇_θ H(π_x) = −π ⊙ (log π + H) per row (the ascent direction of an entropy bonus).

  Examples:
    >>> import jax.numpy as jnp
    >>> pi = jnp.array([[0.5, 0.5]])
    >>> # the uniform row is the entropy's maximum
    >>> float(jnp.abs(entropy_grad(pi, jnp.log(pi))).max())
    0.0
    >>> pi = jnp.array([[0.25, 0.75]])
    >>> (entropy_grad(pi, jnp.log(pi))[0, 0] > 0).item()  # ascent moves towards uniform
    True
  """
  lp = jnp.where(pi > 0, log_pi, 0.0)
  h = -jnp.sum(pi * lp, axis=-1, keepdims=True)
  return -pi * (lp + h)


def sft_grad(inst: Instance, theta: jax.Array) -> jax.Array:
  r"""Closed-form ∇_θ L for the tabular softmax policy π = softmax(θ) (B5).

  .. math:: \nabla_{\theta_x} L = w_x (\pi_x - d_x)

  Args:
    inst: instance.
    theta: [X, Y] logits (masked entries are ignored).

  Returns:
    [X, Y] gradient (0 on masked entries).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.25, 0.75]], [[0.0, 1.0]], 1.0)
    >>> sft_grad(inst, jnp.zeros((1, 2))).tolist()  # w (π − d) = (½ − ¼, ½ − ¾)
    [[0.25, -0.25]]
  """
  pi = jnp.exp(policy_log_probs(inst, theta))
  return jnp.where(rl_support(inst), inst.prompt_weights[:, None] * (pi - inst.data), 0.0)


def rl_grad(inst: Instance, theta: jax.Array) -> jax.Array:
  r"""Closed-form ∇_θ J_β for the tabular softmax policy (B5).

  .. math:: \nabla_{\theta_x} J_\beta = w_x F_x h_x,\quad h_x = r_x - \beta\log(\pi_x/\rho_x)

  Returns:
    [X, Y] gradient (0 off the RL support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> rl_grad(inst, jnp.zeros((1, 2))).tolist()  # at π = ρ the KL term vanishes: F_π r = (−¼, ¼)
    [[-0.25, 0.25]]
    >>> float(jnp.abs(rl_grad(inst, gibbs_tilt(inst))).max()) < 1e-15  # 0 at π*_β
    True
  """
  log_pi = policy_log_probs(inst, theta)
  support = rl_support(inst)
  pi = jnp.exp(log_pi)
  log_ratio = (jnp.where(support, log_pi, 0.0)
               - safe_log(jnp.where(support, inst.reference, 1.0)))
  h = jnp.where(support, inst.reward - inst.beta * log_ratio, 0.0)
  return jnp.where(support, inst.prompt_weights[:, None] * fisher_matvec(pi, h), 0.0)
