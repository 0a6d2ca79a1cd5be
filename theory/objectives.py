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

from ._numerics import NEG_INF, check_rank, masked_dot, plogq, safe_log
from .instance import Instance

__all__ = [
    "safe_log", "masked_log_softmax", "policy_log_probs", "rl_support", "initial_logits",
    "logits_of", "entropy_rows", "kl_rows", "tv_rows", "expect",
    "sft_loss", "sft_optimum_loss", "sft_excess", "reward", "regularized_reward",
    "log_partition", "gibbs_tilt", "rl_value", "c1",
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
  """
  theta = jnp.where(mask, theta, NEG_INF)
  return theta - jax.nn.logsumexp(theta, axis=-1, keepdims=True)


def rl_support(inst: Instance) -> jax.Array:
  """[X, Y] bool: responses the RL side can reach (real and with reference > 0)."""
  return inst.response_mask & (inst.reference > 0)


def policy_log_probs(inst: Instance, theta: jax.Array) -> jax.Array:
  """Tabular softmax policy softmax(theta_x) over the RL support of ``inst``."""
  check_rank("theta", theta, 2)
  return masked_log_softmax(theta, rl_support(inst))


def initial_logits(inst: Instance) -> jax.Array:
  r"""θ₀ = log ρ on the RL support, 0 elsewhere (finite everywhere; masked entries are inert).

  Every flow, recipe and trainer starts here: softmax(θ₀) = ρ.
  """
  support = rl_support(inst)
  return jnp.where(support, jnp.log(jnp.where(support, inst.reference, 1.0)), 0.0)


def logits_of(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """Finite logits of a policy: log π on the RL support (−745 where π = 0), 0 elsewhere."""
  support = rl_support(inst)
  return jnp.where(support & jnp.isfinite(log_pi), log_pi, jnp.where(support, -745.0, 0.0))


def expect(inst: Instance, per_prompt: jax.Array) -> jax.Array:
  """E_w[f] = sum_x w_x f(x) for f given as [X] (padded prompts have w = 0).

  Uses ``where`` so that an infinite value on a weight-0 prompt does not poison the sum.
  """
  w = inst.prompt_weights
  return jnp.sum(jnp.where(w > 0, w * jnp.where(w > 0, per_prompt, 0.0), 0.0))


def entropy_rows(p: jax.Array) -> jax.Array:
  """[X] Shannon entropies H(p_x) in nats."""
  return -jnp.sum(plogq(p, safe_log(p)), axis=-1)


def kl_rows(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  r"""[X] KL(p_x || q_x) = sum_y p log(p/q), +inf where p puts mass where q has none.

  Args:
    log_p: [X, Y] log-probabilities of p (-inf where p = 0).
    log_q: [X, Y] log-probabilities of q.

  Returns:
    [X] per-prompt KL divergences (nats).
  """
  p = jnp.exp(log_p)
  pos = p > 0
  diff = jnp.where(pos, log_p, 0.0) - jnp.where(pos, log_q, 0.0)
  return jnp.sum(jnp.where(pos, p * diff, 0.0), axis=-1)


def tv_rows(p: jax.Array, q: jax.Array) -> jax.Array:
  """[X] total variation ½ ||p_x − q_x||_1."""
  return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def sft_loss(inst: Instance, log_pi: jax.Array) -> jax.Array:
  r"""SFT cross-entropy L(π) = E_w[ sum_y d(y|x) (−log π(y|x)) ].

  Args:
    inst: the instance (data d, weights w).
    log_pi: [X, Y] policy log-probabilities.

  Returns:
    [] the loss in nats (+inf if π misses part of supp d).

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
  """min over tabular policies of L: L(d) = E_w[H(d_x)]."""
  return expect(inst, entropy_rows(inst.data))


def sft_excess(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """ΔL(π) = L(π) − L(d) = E_w KL(d_x || π_x) (B1), computed as the KL (no cancellation)."""
  return expect(inst, kl_rows(safe_log(inst.data), log_pi))


def reward(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """Unregularised reward J(π) = E_w[ sum_y π(y|x) r(x, y) ] (the paper's Eq. 18)."""
  check_rank("log_pi", log_pi, 2)
  return expect(inst, masked_dot(jnp.exp(log_pi), inst.reward))


def log_partition(inst: Instance) -> jax.Array:
  r"""[X] log Z_β(x) = log sum_y ρ(y|x) exp(r(x,y)/β), by logsumexp (no overflow for tiny β)."""
  return jax.nn.logsumexp(safe_log(inst.reference) + inst.reward / inst.beta, axis=-1)


def gibbs_tilt(inst: Instance) -> jax.Array:
  r"""log of the KL-regularised RL optimum π*_β = ρ exp(r/β) / Z_β.

  .. math:: \log\pi^*_\beta(y|x) = \log\rho(y|x) + r(x,y)/\beta - \log Z_\beta(x)

  Args:
    inst: instance (reference ρ, reward r, β).

  Returns:
    [X, Y] log-probabilities (-inf where ρ = 0).

  >>> from nondecoupling.theory.instance import make_instance
  >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
  >>> import jax.numpy as jnp
  >>> [round(float(v), 4) for v in jnp.exp(gibbs_tilt(inst))[0]]
  [0.2689, 0.7311]

  References: arXiv 2601.07389 Eq. (8); Peng et al. 2019 (AWR).
  """
  log_rho = safe_log(inst.reference)
  logits = log_rho + inst.reward / inst.beta
  return jnp.where(inst.reference > 0, logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True),
                   NEG_INF)


def regularized_reward(inst: Instance, log_pi: jax.Array) -> jax.Array:
  r"""J_β(π; ρ) = J(π) − β E_w[KL(π_x || ρ_x)]."""
  return reward(inst, log_pi) - inst.beta * expect(inst, kl_rows(log_pi, safe_log(inst.reference)))


def rl_value(inst: Instance) -> jax.Array:
  """The RL optimum value J_β(π*_β) = β E_w[log Z_β(x)] (B2)."""
  return inst.beta * expect(inst, log_partition(inst))


def c1(inst: Instance) -> jax.Array:
  r"""C₁(β; ρ) = E_w[ log Z_β(x) − E_{d_x}[r]/β ] = L(π*_β) − L(ρ) (B3).

  With ρ = d this is Theorem 3.1's constant, = E_w KL(d_x || π*_x) ≥ 0.

  >>> from nondecoupling.theory.instance import make_instance
  >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
  >>> round(float(c1(inst)), 6)  # log((1 + e)/2) − 1/2
  0.120115

  References: arXiv 2601.07389, Theorem 3.1 (Eq. 13).
  """
  return expect(inst, log_partition(inst) - masked_dot(inst.data, inst.reward) / inst.beta)


def fisher_matvec(pi: jax.Array, v: jax.Array) -> jax.Array:
  r"""F_π v = π ⊙ v − (π·v) π per row, F_π = diag(π) − ππᵀ (the softmax Jacobian).

  Also E_{y∼π}[v(y) ∇_θ log π(y)] for a per-response weight v; entries where π = 0 are ignored
  (v may be ±∞ there).
  """
  v = jnp.where(pi > 0, v, 0.0)
  return pi * v - pi * jnp.sum(pi * v, axis=-1, keepdims=True)


def entropy_grad(pi: jax.Array, log_pi: jax.Array) -> jax.Array:
  r"""∇_θ H(π_x) = −π ⊙ (log π + H) per row (the ascent direction of an entropy bonus)."""
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
  """
  pi = jnp.exp(policy_log_probs(inst, theta))
  return jnp.where(rl_support(inst), inst.prompt_weights[:, None] * (pi - inst.data), 0.0)


def rl_grad(inst: Instance, theta: jax.Array) -> jax.Array:
  r"""Closed-form ∇_θ J_β for the tabular softmax policy (B5).

  .. math:: \nabla_{\theta_x} J_\beta = w_x F_x h_x,\quad h_x = r_x - \beta\log(\pi_x/\rho_x)

  Returns:
    [X, Y] gradient (0 off the RL support).
  """
  log_pi = policy_log_probs(inst, theta)
  support = rl_support(inst)
  pi = jnp.exp(log_pi)
  log_ratio = (jnp.where(support, log_pi, 0.0)
               - safe_log(jnp.where(support, inst.reference, 1.0)))
  h = jnp.where(support, inst.reward - inst.beta * log_ratio, 0.0)
  return jnp.where(support, inst.prompt_weights[:, None] * fisher_matvec(pi, h), 0.0)
