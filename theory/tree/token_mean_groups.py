r"""G5's ``token-mean`` group with two rewards, by convolving the others' draws (ours).

With ``token-mean`` (DAPO) the weight w_1 = Â_1 / Σ_j |o_j| of a response reads the other G − 1
responses through their rewards and their total length. :mod:`.groups` enumerates the multisets
of the others' (reward, length) levels: C(L + G − 2, G − 1) of them, 490,314 for DAPO's G = 16
over the 9 levels of a 0/1 reward on a depth-5 tree, beyond its limit. When every prompt's
leaves carry at most two distinct rewards u₀ ≤ u₁ (a verifiable 0/1 reward, an exact-match rule),
Â_1 depends on the others only through K, the number of them with reward u₁, and the normaliser
only through their total length S. The law of (K, S) is the (G − 1)-fold convolution of one draw's
law q(c, ℓ) = π(class c, length ℓ):

.. math:: P_j(k, s) = \sum_{c \in \{0, 1\}} \sum_{\ell=1}^{T} P_{j-1}(k - c,\ s - \ell)\, q(c, \ell),
          \qquad P_0 = \delta_{(0, 0)},

so that, for an own response of reward r and length ℓ,

.. math:: G\,\mathbb{E}[w_1^{\pm} \mid o_1] = G \sum_{k, s} P_{G-1}(k, s)\,
          \frac{\hat A(r;\ k \text{ of } u_1,\ G-1-k \text{ of } u_0)^{\pm}}{\ell + s}.

Cost per prompt: one pass over the leaf slots for q (a leaf's length is its level's, so q is a
pair of sums per level), (G − 1) · 2T shifted adds of a [G, (G − 1) T + 1] table, a [2, T] table of
weights and one gather of it per leaf slot; no grouping into levels, no multiset table. Every term
is a product of probabilities (no cancellation); P is in probability space, and a path of the
convolution below 1e-308 of the total is dropped.

References: THEORY.md G5 (this project's); DAPO, Yu et al., arXiv 2503.14476 §3.3 (token-level
loss; verl ``agg_loss("token-mean")``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..recipes.advantage import group_advantage

__all__ = ["TWO_REWARDS", "draw_law", "others_law", "two_reward_table", "two_reward_leaf_weights"]

TWO_REWARDS = 2  # the most distinct rewards per prompt this convolution handles


def draw_law(r: jax.Array, mask: jax.Array, log_p: jax.Array, sizes: tuple[int, ...]):
  """[2, T + 1] q(c, ℓ): the π-mass of one draw with reward class c (1: the prompt's largest
  reward on its support, 0: the other) and length ℓ (column 0 empty).

  Args:
    r, mask, log_p: [W] the leaf slots' reward, whether a leaf is there, and log π(y).
    sizes: the flat slot blocks of the tree's levels (static; block t holds the leaves of
      length t + 1).

  Returns:
    (q [2, T + 1], u₀, u₁): the law and the two rewards (equal when the prompt has one).

  Examples:
    >>> import jax.numpy as jnp
    >>> q, lo, hi = draw_law(jnp.array([0.0, 1.0, 1.0, 0.0]), jnp.array([True, True, True, False]),
    ...                      jnp.log(jnp.array([0.5, 0.25, 0.25, 1.0])), (2, 2))
    >>> q.tolist(), float(lo), float(hi)
    ([[0.0, 0.5, 0.0], [0.0, 0.25, 0.25]], 0.0, 1.0)
  """
  high = jnp.max(jnp.where(mask, r, -jnp.inf))
  low = jnp.min(jnp.where(mask, r, jnp.inf))
  high, low = jnp.where(jnp.any(mask), high, 0.0), jnp.where(jnp.any(mask), low, 0.0)
  p = jnp.where(mask, jnp.exp(jnp.where(mask, log_p, 0.0)), 0.0)
  top = mask & (r == high)
  q1, q0, start = [jnp.zeros((), p.dtype)], [jnp.zeros((), p.dtype)], 0
  for size in sizes:
    block = slice(start, start + size)
    q1.append(jnp.sum(jnp.where(top[block], p[block], 0.0)))
    q0.append(jnp.sum(jnp.where(top[block], 0.0, p[block])))
    start += size
  return jnp.stack([jnp.stack(q0), jnp.stack(q1)]), low, high


def others_law(q: jax.Array, others: int) -> jax.Array:
  """[others + 1, others · T + 1] P(K = k, S = s) of ``others`` i.i.d. draws of law ``q``
  [2, T + 1] (K: draws of class 1, S: their total length).

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])  # class 0 has length 1, class 1 length 2
    >>> others_law(q, 2).tolist()  # K = 0: S = 2; K = 1: S = 3 (twice); K = 2: S = 4
    [[0.0, 0.0, 0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 0.25]]
  """
  depth = q.shape[-1] - 1
  shape = (others + 1, others * depth + 1)
  start = jnp.zeros(shape, q.dtype).at[0, 0].set(1.0)

  def draw(_, law):
    out = jnp.zeros_like(law)
    up = jnp.pad(law, ((1, 0), (0, 0)))[:-1]  # k → k + 1: the draw has class 1
    for ell in range(1, depth + 1):  # s → s + ℓ
      shift = lambda a, ell=ell: jnp.pad(a, ((0, 0), (ell, 0)))[:, :shape[1]]
      out = out + q[0, ell] * shift(law) + q[1, ell] * shift(up)
    return out

  return jax.lax.fori_loop(0, others, draw, start)


def two_reward_table(q: jax.Array, low, high, *, group_size: int, use_std: bool, eps: float):
  r"""[3, 2, T + 1] (E[Â⁺ n], E[Â⁻ n], E[n]) for an own response of class c and length ℓ, with
  n = 1 / Σ_j |o_j| and the others drawn from ``q`` (module docstring); not multiplied by G.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.array([[0.0, 0.5], [0.0, 0.5]])  # rewards 0 and 1, each of length 1
    >>> t = two_reward_table(q, 0.0, 1.0, group_size=2, use_std=False, eps=1e-6)
    >>> (t[0] - t[1])[:, 1].tolist(), t[2][:, 1].tolist()  # (r − the pair's mean)/2: ∓ 1/4 · 1/2 · 1/2
    ([-0.125, 0.125], [0.5, 0.5])
  """
  others = group_size - 1
  law = others_law(q, others)
  k = jnp.arange(others + 1, dtype=q.dtype)
  ell = jnp.arange(q.shape[-1], dtype=q.dtype)
  s = jnp.arange(law.shape[1], dtype=q.dtype)
  # M[k, ℓ] = Σ_s P(k, s) / (ℓ + s) (column ℓ = 0 is never read: no response has length 0)
  mean_inv = law @ (1.0 / jnp.maximum(ell[None, :] + s[:, None], 1.0))

  def own(r):
    d_hi, d_lo = high - r, low - r
    adv = group_advantage(r, k * d_hi + (others - k) * d_lo,
                          k * d_hi * d_hi + (others - k) * d_lo * d_lo, group_size, use_std, eps)
    adv = jnp.broadcast_to(adv, k.shape)  # a group of one: Â is the own reward's alone
    return jnp.maximum(adv, 0.0) @ mean_inv, jnp.maximum(-adv, 0.0) @ mean_inv

  (pos_lo, neg_lo), (pos_hi, neg_hi) = own(low), own(high)
  norm = jnp.sum(mean_inv, axis=0)
  return jnp.stack([jnp.stack([pos_lo, pos_hi]), jnp.stack([neg_lo, neg_hi]),
                    jnp.stack([norm, norm])])


def two_reward_leaf_weights(r, mask, log_p, sizes: tuple[int, ...], *, group_size: int,
                            use_std: bool, eps: float):
  """(E[Â⁺ n], E[Â⁻ n], E[n]) [W] on one prompt's leaf slots (0 elsewhere), not multiplied by G,
  for a prompt whose support carries at most two distinct rewards.

  Args:
    r, mask, log_p: [W] leaf rewards, leaf mask, log π(y) on the flat slots.
    sizes: the flat slot blocks of the levels (block t: leaves of length t + 1; static).
    group_size: G ≥ 1.
    use_std, eps: as :func:`~nondecoupling.theory.recipes.advantage.group_advantage`.

  Examples:
    >>> import jax.numpy as jnp
    >>> pos, neg, n = two_reward_leaf_weights(jnp.array([0.0, 1.0]), jnp.array([True, True]),
    ...     jnp.log(jnp.array([0.5, 0.5])), (2,), group_size=2, use_std=False, eps=1e-6)
    >>> (pos - neg).tolist(), n.tolist()
    ([-0.125, 0.125], [0.5, 0.5])
  """
  q, low, high = draw_law(r, mask, log_p, sizes)
  table = two_reward_table(q, low, high, group_size=group_size, use_std=use_std, eps=eps)
  length = jnp.concatenate([jnp.full((size,), t + 1, jnp.int32) for t, size in enumerate(sizes)])
  index = jnp.where(r == high, q.shape[-1], 0) + length
  flat = table.reshape(3, -1)
  return tuple(jnp.where(mask, jnp.take(flat[i], index), 0.0) for i in range(3))
