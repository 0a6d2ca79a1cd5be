"""The obvious NumPy/SciPy way to a recipe's expected field on a tree: over sequences.

A sequence-weighted field E_{y∼π}[c(y) ∇_θ log π(y|x)] (REINFORCE on a per-sequence weight, what
every group recipe's expected field is at θ = θ_old) is, per prompt,

  g(s, ·) = Σ_{y through s} π(y) c(y) (e_{y_t} − π(·|s)),

so with the leaves listed as paths (bench/numpy_sequences.py) and the path-slot incidence as a
sparse matrix P [n sequences, slots], the slot sums are one sparse product (π ⊙ c) P over the whole
batch of prompts, and g = S − π(·|s) Σ_a S(s, a) per node. log π(y) is the product log π_slots Pᵀ.
Vectorised over prompts and sequences (no Python loop over either): the strongest baseline a
researcher would write without a tree engine.

These recipes have closed-form sequence weights at θ = θ_old (the clip inactive):

- Dr.GRPO (group G, Â = r − mean, n = 1/(G T)): G E[Â n | y] = (G − 1)/(G T) (r(y) − V(x));
- PPO-clip (group of one, Â = r − V_old(x), token-mean n = 1/|y|): (r(y) − V(x))/|y|;
- GRPO (group G, Â = (r − mean)/(unbiased std + ε), n = 1/(G|y|)), for a 0/1 reward (the
  benchmark's): G E[Â n | y] = E_k[(r − s/G)/(σ_s + ε)]/|y|, k ∼ Binomial(G − 1, p) the others'
  successes, p = E_π r, s = r(y) + k, σ_s² = (s − s²/G)/(G − 1); plus its KL loss, verl's clamped
  k3 (kl = log ρ − log π clamped to ±20, k3 = e^kl − kl − 1 clamped at 10) with coefficient c:
  −c Σ_y π(y) (1/|y|) Σ_t ∂k3_t/∂θ, where ∂k3/∂log π(a|s) = 1 − e^kl inside both clamps and 0
  outside, one more sparse product for the slot sums;

- HPT (Lv et al., switch; n rollouts, gate γ, token-sum losses, Dr.GRPO advantage Â = r − mean
  summed over the group, entropy bonus c_H), for a 0/1 reward: K = r(y) + k successes,
  k ∼ Binomial(n − 1, p); the SFT weight c_sft Pr(K' ≤ γ), K' ∼ Binomial(n, p), on the data
  sequences, c_rl n E_k[(r − (r + k)/n) 1{r + k > γ}] on the rollouts, and the entropy bonus
  c_H Σ_s P_π(s) ∇_θ H(π(·|s)) with ∇H = −π (log π − Σ π log π) per node, P_π(s) the row sums of
  the sequence mass's slot sums (the same sparse product, a second column block);

- DAPO (group G = 16, Â as GRPO's, token-mean n = 1/Σ_j |o_j|, dynamic sampling), for a 0/1
  reward: G E[Â n | y] = G Σ_{k,s} P(k, s) Â(r(y); k)/(|y| + s), P the law of the others'
  successes k and total length s, (G − 1) convolutions of one draw's law q(r, ℓ) (the π-mass
  of the sequences of reward r and length ℓ), times 1/Σ_x w_x (1 − p^G − (1 − p)^G);

with V(x) = E_π r. All are multiplied by the prompt weight w_x, as the library's fields are.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import binom

from bench.numpy_sequences import _flat, _log_softmax_rows

__all__ = ["incidence", "sequence_weighted_field", "recipe_weights", "recipe_field", "hpt_field",
           "relift_field", "luffy_field", "srft_field"]


def incidence(flat: np.ndarray, mask: np.ndarray, n_slots: int) -> sp.csr_matrix:
  """[n, n_slots] sparse 0/1: sequence i passes through slot j (padding positions dropped)."""
  rows = np.repeat(np.arange(flat.shape[0]), flat.shape[1])[mask.ravel()]
  return sp.csr_matrix((np.ones(rows.size), (rows, flat.ravel()[mask.ravel()])),
                       shape=(flat.shape[0], n_slots))


def sequence_weighted_field(levels, theta, coef, path_matrix):
  """Per level [X, N_t, k]: Σ_y coef(y) (e_{y_t} − π(·|s_t)) at every node on y's path.

  Args:
    levels: per level, numpy arrays "leaf", "internal" [X, N_t, k].
    theta: per level logits [X, N_t, k].
    coef: [X, n] per-sequence coefficient (π(y) c(y) w_x).
    path_matrix: [n, Σ_t N_t k + 1] incidence (:func:`incidence`).
  """
  slots = np.asarray((path_matrix.T @ coef.T).T)                          # [X, slots]
  out, start = [], 0
  for lv, th in zip(levels, theta):
    x, rows, k = lv["leaf"].shape
    s = slots[:, start:start + rows * k].reshape(x, rows, k)
    start += rows * k
    valid = lv["leaf"] | lv["internal"]
    pi = np.exp(_log_softmax_rows(th, valid))
    out.append(np.where(valid, s - pi * s.sum(-1, keepdims=True), 0.0))
  return out


def _grpo_advantage(r, p, group_size: int, eps: float):
  """[X, n] E[Â_1 | r_1 = r] for a 0/1 reward, the others' successes Binomial(G − 1, p): a table
  [X, 2] over the two reward values, read at each sequence's reward."""
  if not np.all((r == 0.0) | (r == 1.0)):
    raise ValueError("the GRPO baseline needs a 0/1 reward")
  g = group_size
  k = np.arange(g)                                                         # others' successes
  pmf = binom.pmf(k[None, :], g - 1, p)                                    # [X, G]
  own = np.array([0.0, 1.0])[:, None]
  s = own + k[None, :]                                                     # [2, G]
  std = np.sqrt(np.maximum(s - s * s / g, 0.0) / (g - 1))
  table = pmf @ ((own - s / g) / (std + eps)).T                            # [X, 2]
  return np.take_along_axis(table, r.astype(np.int64), axis=1)


def _dapo_weights(pi, r, lengths, depth: int, group_size: int, eps: float):
  """[X, n] G E[Â n | y] for DAPO's token-mean group (n = 1/Σ_j |o_j|, std-normalised Â, 0/1
  reward), times dynamic sampling's 1/E_w[q]: the law of the others' successes and total length
  by G − 1 convolutions of one draw's law, vectorised over prompts (module docstring)."""
  if not np.all((r == 0.0) | (r == 1.0)):
    raise ValueError("the DAPO baseline needs a 0/1 reward")
  g, t = group_size, depth
  cells = (r.astype(np.int64) * (t + 1) + lengths.astype(np.int64)[None, :])     # [X, n]
  q = np.zeros((pi.shape[0], 2 * (t + 1)))
  np.add.at(q, (np.repeat(np.arange(pi.shape[0]), pi.shape[1]), cells.ravel()), pi.ravel())
  q = q.reshape(-1, 2, t + 1)
  size = (g - 1) * t + 1
  law = np.zeros((pi.shape[0], g, size))
  law[:, 0, 0] = 1.0
  for _ in range(g - 1):
    new = np.zeros_like(law)
    for ell in range(1, t + 1):
      new[:, :, ell:] += q[:, 0, ell, None, None] * law[:, :, :size - ell]
      new[:, 1:, ell:] += q[:, 1, ell, None, None] * law[:, :-1, :size - ell]
    law = new
  k = np.arange(g)
  own = np.array([0.0, 1.0])[:, None]
  tot = own + k[None, :]                                                    # [2, G]
  std = np.sqrt(np.maximum(tot - tot * tot / g, 0.0) / (g - 1))
  adv = (own - tot / g) / (std + eps)                                       # [2, G]
  # [T + 1, S] 1/(ℓ + s); column ℓ = 0 (no sequence has length 0) is never read
  inv = 1.0 / np.maximum(np.arange(t + 1)[:, None] + np.arange(size)[None, :], 1)
  h = g * np.einsum("xks,ck,ls->xcl", law, adv, inv)                       # [X, 2, T + 1]
  return h.reshape(h.shape[0], -1)[np.arange(h.shape[0])[:, None], cells]


def recipe_weights(name: str, log_pi, r, lengths, depth: int, group_size: int, eps: float = 1e-6,
                   w=None):
  """[X, n] the per-sequence weight c(y) of ``name`` (module docstring)."""
  pi = np.exp(log_pi)
  value = (pi * r).sum(-1, keepdims=True)
  if name == "dapo":
    p = value[:, 0]
    with np.errstate(divide="ignore"):  # p = 0 or 1: log 0 = −∞, no group is informative
      informative = -np.expm1(np.logaddexp(group_size * np.log(p), group_size * np.log1p(-p)))
    factor = 1.0 / np.sum(w * informative)
    return factor * _dapo_weights(pi, r, lengths, depth, group_size, eps)
  if name == "grpo":
    return _grpo_advantage(r, value, group_size, eps) / lengths[None, :]
  if name == "dr_grpo":
    return (group_size - 1) / (group_size * depth) * (r - value)
  if name == "ppo_clip":
    return (r - value) / lengths[None, :]
  raise KeyError(name)


def _k3_clamped_slopes(log_pi_slots, log_rho_slots):
  """[X, slots] ∂k3/∂log π of verl's clamped k3 (module docstring), 0 on the padding slot."""
  kl = np.clip(log_rho_slots - log_pi_slots, -20.0, 20.0)
  inside = np.abs(log_rho_slots - log_pi_slots) <= 20.0
  ratio = np.exp(kl)
  return np.where(inside & (ratio - kl - 1.0 <= 10.0), 1.0 - ratio, 0.0)


def recipe_field(name: str, levels, theta, w, flat, mask, group_size: int, kl_coef: float = 0.0,
                 eps: float = 1e-6):
  """The expected field of ``name`` over sequences, per level [X, N_t, k] (prompt weights in);
  ``kl_coef`` is GRPO's clamped-k3 loss coefficient (the other two have no KL term)."""
  valid = [lv["leaf"] | lv["internal"] for lv in levels]
  log_pi_slots = _flat([_log_softmax_rows(th, v) for th, v in zip(theta, valid)], 0.0)
  path_matrix = incidence(flat, mask, log_pi_slots.shape[1])
  log_pi = np.asarray((path_matrix @ log_pi_slots.T).T)                   # [X, n]
  leaf_at = flat[np.arange(len(flat)), mask.sum(1) - 1]
  r = _flat([lv["reward"] for lv in levels], 0.0)[:, leaf_at]
  lengths = mask.sum(1).astype(np.float64)
  c = recipe_weights(name, log_pi, r, lengths, len(levels), group_size, eps, w)
  field = sequence_weighted_field(levels, theta, w[:, None] * np.exp(log_pi) * c, path_matrix)
  if name != "grpo" or kl_coef == 0.0:
    return field
  with np.errstate(divide="ignore"):
    log_rho_slots = _flat([np.where(v, np.log(lv["reference"]), 0.0)
                           for lv, v in zip(levels, valid)], 0.0)
  slots = np.asarray((path_matrix.T @ (w[:, None] * np.exp(log_pi) / lengths[None, :]).T).T)
  slots = slots * _k3_clamped_slopes(log_pi_slots, log_rho_slots)
  out, start = [], 0
  for f, lv, v, th in zip(field, levels, valid, theta):
    x, rows, k = lv["leaf"].shape
    s = slots[:, start:start + rows * k].reshape(x, rows, k)
    start += rows * k
    pi = np.exp(_log_softmax_rows(th, v))
    out.append(f - kl_coef * np.where(v, s - pi * s.sum(-1, keepdims=True), 0.0))
  return out


def _hpt_rl_advantage(r, p, n: int, gate: int):
  """[X, n_seq] E[Â 1{K > γ} | r(y)] without std for a 0/1 reward (a table over the two rewards)."""
  if not np.all((r == 0.0) | (r == 1.0)):
    raise ValueError("the HPT baseline needs a 0/1 reward")
  k = np.arange(n)                                                         # others' successes
  pmf = binom.pmf(k[None, :], n - 1, p)                                    # [X, n]
  own = np.array([0.0, 1.0])[:, None]
  adv = own - (own + k[None, :]) / n if n > 1 else own + 0.0 * k[None, :]
  table = pmf @ np.where(own + k[None, :] > gate, adv, 0.0).T              # [X, 2]
  return np.take_along_axis(table, r.astype(np.int64), axis=1)


def _sequence_terms(levels, theta, flat, mask):
  """Per-level valid slots and log-softmax rows, the path incidence, and per sequence [X, n_seq]
  log π(y), r(y) and d(y)."""
  valid = [lv["leaf"] | lv["internal"] for lv in levels]
  log_rows = [_log_softmax_rows(th, v) for th, v in zip(theta, valid)]
  path_matrix = incidence(flat, mask, sum(a[0].size for a in log_rows) + 1)
  log_pi = np.asarray((path_matrix @ _flat(log_rows, 0.0).T).T)
  leaf_at = flat[np.arange(len(flat)), mask.sum(1) - 1]
  r = _flat([lv["reward"] for lv in levels], 0.0)[:, leaf_at]
  d = _flat([lv["data"] for lv in levels], 0.0)[:, leaf_at]
  return valid, log_rows, path_matrix, log_pi, r, d


def _field_with_entropy(levels, valid, log_rows, path_matrix, coef, entropy_weight, shaped=()):
  """Σ_y coef(y) ∇log π(y) + Σ_j Σ_y b_j(y) Σ_t φ_j(π(y_t|y_<t)) ∇log π(y_t|y_<t)
  + Σ_s E(s) ∇_θ H(π(·|s)), E(s) = Σ_{y through s} entropy_weight(y): every slot sum from one
  sparse product (a column block each), ∇H = −π (log π − Σ π log π); ``shaped`` the pairs
  (b_j [X, n], φ_j applied to π per slot)."""
  x = coef.shape[0]
  blocks = [coef, entropy_weight] + [b for b, _ in shaped]
  slots = np.asarray((path_matrix.T @ np.concatenate(blocks).T).T)        # [blocks X, slots]
  out, start = [], 0
  for lv, v, lp in zip(levels, valid, log_rows):
    _, rows, k = lv["leaf"].shape
    s = slots[:, start:start + rows * k].reshape(len(blocks) * x, rows, k)
    start += rows * k
    pi_s = np.where(v, np.exp(lp), 0.0)
    plogp = np.where(v, pi_s * lp, 0.0)
    grad_h = -np.where(v, pi_s * (lp - plogp.sum(-1, keepdims=True)), 0.0)
    main = s[:x] + sum(fn(pi_s) * s[(2 + j) * x:(3 + j) * x] for j, (_, fn) in enumerate(shaped))
    out.append(np.where(v, main - pi_s * main.sum(-1, keepdims=True), 0.0)
               + s[x:2 * x].sum(-1, keepdims=True) * grad_h)
  return out


def hpt_field(levels, theta, w, flat, mask, n: int = 8, gate: int = 0, sft_coef: float = 1.0,
              rl_coef: float = 1.0, entropy_coef: float = 0.001):
  """HPT's expected field over sequences (module docstring), per level [X, N_t, k]; the library's
  defaults (``group_sum``: the RL term is summed over the n rollouts, no std)."""
  valid, log_rows, path_matrix, log_pi, r, d = _sequence_terms(levels, theta, flat, mask)
  pi = np.exp(log_pi)
  p = (pi * r).sum(-1, keepdims=True)
  sft_weight = sft_coef * binom.cdf(gate, n, p)                            # [X, 1]
  coef = w[:, None] * (sft_weight * d + rl_coef * n * pi * _hpt_rl_advantage(r, p, n, gate))
  return _field_with_entropy(levels, valid, log_rows, path_matrix, coef,
                             entropy_coef * w[:, None] * pi)


def relift_field(levels, theta, w, flat, mask, n: int = 8, rl_coef: float = 1.0,
                 entropy_coef: float = 0.001, batch_prompts: int = 128, buffer_size: int = 128,
                 sft_lr_ratio: float = 1.0, sft_entropy_coef: float = 0.001):
  """ReLIFT's expected field over sequences (the amortised schedule, the library's defaults):
  Dr.GRPO RL summed over the n rollouts, c_rl n (1 − 1/n)(r − V), with the rollouts' entropy
  bonus, plus the SFT drift r_sft (B/S)(1 − p)^n on the data sequences with the demonstrations'
  entropy bonus c_H' Σ_s D(s) ∇H_s, for a 0/1 reward (p = V)."""
  valid, log_rows, path_matrix, log_pi, r, d = _sequence_terms(levels, theta, flat, mask)
  pi = np.exp(log_pi)
  p = (pi * r).sum(-1, keepdims=True)
  rate = sft_lr_ratio * batch_prompts / buffer_size * (1.0 - p) ** n     # [X, 1]
  adv = (1.0 - 1.0 / n) * (r - p) if n > 1 else r
  coef = w[:, None] * (rl_coef * n * pi * adv + rate * d)
  return _field_with_entropy(levels, valid, log_rows, path_matrix, coef,
                             w[:, None] * (entropy_coef * pi + rate * sft_entropy_coef * d))


def luffy_field(levels, theta, w, flat, mask, n_on: int = 7, gamma: float | None = 0.1,
                entropy_coef: float = 0.001):
  """LUFFY's expected field over sequences (the library's defaults: no std, ``group_sum``):
  on-policy n_on π(y) (r − (r + (n_on − 1)V + E_d r)/(n_on + 1)), the demonstration
  d(y*) (r − (r + n_on V)/(n_on + 1)) with the shaping φ(p) = γp/(p + γ)² of each token's
  π(y*_t|y*_<t) (φ(p) = p without shaping), and the rollouts' entropy bonus."""
  valid, log_rows, path_matrix, log_pi, r, d = _sequence_terms(levels, theta, flat, mask)
  pi = np.exp(log_pi)
  v = (pi * r).sum(-1, keepdims=True)
  e_d = (d * r).sum(-1, keepdims=True)
  a_on = r - (r + (n_on - 1) * v + e_d) / (n_on + 1)
  a_off = r - (r + n_on * v) / (n_on + 1)
  shaping = (lambda p: p) if gamma is None else (lambda p: gamma * p / (p + gamma) ** 2)
  return _field_with_entropy(levels, valid, log_rows, path_matrix, w[:, None] * n_on * pi * a_on,
                             entropy_coef * w[:, None] * pi, [(w[:, None] * d * a_off, shaping)])


def _mixed_off_parts(r, p, n_on: int, eps: float):
  """[X, n_seq] each: E[Â_off⁺ | y*] and E[Â_off⁻ | y*] of the demonstration in a mixed group
  (n_on rollouts, successes k ∼ Binomial(n_on, p), and y*), std-normalised (unbiased std + ε),
  for a 0/1 reward: a table over the demonstration's two reward values."""
  if not np.all((r == 0.0) | (r == 1.0)):
    raise ValueError("the SRFT baseline needs a 0/1 reward")
  g = n_on + 1
  k = np.arange(n_on + 1)                                                  # rollouts' successes
  pmf = binom.pmf(k[None, :], n_on, p)                                     # [X, n_on + 1]
  own = np.array([0.0, 1.0])[:, None]
  s = own + k[None, :]                                                     # [2, n_on + 1]
  adv = (own - s / g) / (np.sqrt(np.maximum(s - s * s / g, 0.0) / (g - 1)) + eps)
  pick = lambda a: np.take_along_axis(pmf @ a.T, r.astype(np.int64), axis=1)
  return pick(np.maximum(adv, 0.0)), pick(np.maximum(-adv, 0.0))


def srft_field(levels, theta, w, flat, mask, n_on: int = 7, sft_coef: float = 0.5,
               rl_pos_coef: float = 0.1, eps: float = 1e-6, demo_clip: float = 0.2,
               entropy_coef: float = 0.0):
  """SRFT's expected field over sequences (the library's defaults: std-normalised mixed group,
  per-token clip of the demonstration ratio, no shaping, ``sequence_mean`` entropy), for a 0/1
  reward: d(y*) c_s e^{−H̄(y*)} + π(y) (c_p e^{H̄(y)} 1⁺(y) − 1⁻(y)) per sequence, H̄(y) the mean
  over y's tokens of its nodes' entropies (a sum along the path: one more sparse product); the
  demonstration's RL term d(y*) Σ_t π_t (E[Â⁺|y*] − E[Â⁻|y*] 1{π_t ≥ 1 − ε}) ∇log π_t per slot
  (the behaviour probability 1, so the ratio is π_t; π_t ≤ 1 + ε always)."""
  valid, log_rows, path_matrix, log_pi, r, d = _sequence_terms(levels, theta, flat, mask)
  pi = np.exp(log_pi)
  p = (pi * r).sum(-1, keepdims=True)
  node_h = [-np.where(v, np.exp(lp) * lp, 0.0).sum(-1, keepdims=True) for v, lp in
            zip(valid, log_rows)]
  slot_h = _flat([np.broadcast_to(h, v.shape) for h, v in zip(node_h, valid)], 0.0)
  h_bar = np.asarray((path_matrix @ slot_h.T).T) / mask.sum(1)[None, :]    # [X, n]
  succ = (r > 0.0) & (pi > 0.0)
  pos, neg = _mixed_off_parts(r, p, n_on, eps)
  wx = w[:, None]
  coef = wx * (sft_coef * d * np.exp(-h_bar)
               + pi * np.where(succ, rl_pos_coef * np.exp(h_bar), -1.0))
  return _field_with_entropy(
      levels, valid, log_rows, path_matrix, coef, entropy_coef * wx * pi,
      [(wx * d * pos, lambda q: q), (wx * d * neg, lambda q: -q * (q >= 1.0 - demo_clip))])
