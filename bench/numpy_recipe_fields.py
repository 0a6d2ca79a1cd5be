"""The obvious NumPy/SciPy way to a recipe's expected field on a tree: over sequences.

A sequence-weighted field E_{y∼π}[c(y) ∇_θ log π(y|x)] (REINFORCE on a per-sequence weight, what
every group recipe's expected field is at θ = θ_old) is, per prompt,

  g(s, ·) = Σ_{y through s} π(y) c(y) (e_{y_t} − π(·|s)),

so with the leaves listed as paths (bench/numpy_sequences.py) and the path-slot incidence as a
sparse matrix P [n sequences, slots], the slot sums are one sparse product (π ⊙ c) P over the whole
batch of prompts, and g = S − π(·|s) Σ_a S(s, a) per node. log π(y) is the product log π_slots Pᵀ.
Vectorised over prompts and sequences (no Python loop over either): the strongest baseline a
researcher would write without a tree engine.

Two recipes have closed-form sequence weights at θ = θ_old (the clip inactive, no KL term):

- Dr.GRPO (group G, Â = r − mean, n = 1/(G T)): G E[Â n | y] = (G − 1)/(G T) (r(y) − V(x));
- PPO-clip (group of one, Â = r − V_old(x), token-mean n = 1/|y|): (r(y) − V(x))/|y|;
- GRPO (group G, Â = (r − mean)/(unbiased std + ε), n = 1/(G|y|)), for a 0/1 reward (the
  benchmark's): G E[Â n | y] = E_k[(r − s/G)/(σ_s + ε)]/|y|, k ∼ Binomial(G − 1, p) the others'
  successes, p = E_π r, s = r(y) + k, σ_s² = (s − s²/G)/(G − 1); plus its KL loss, verl's clamped
  k3 (kl = log ρ − log π clamped to ±20, k3 = e^kl − kl − 1 clamped at 10) with coefficient c:
  −c Σ_y π(y) (1/|y|) Σ_t ∂k3_t/∂θ, where ∂k3/∂log π(a|s) = 1 − e^kl inside both clamps and 0
  outside, one more sparse product for the slot sums;

with V(x) = E_π r. All are multiplied by the prompt weight w_x, as the library's fields are.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import binom

from bench.numpy_sequences import _flat, _log_softmax_rows

__all__ = ["incidence", "sequence_weighted_field", "recipe_weights", "recipe_field"]


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


def recipe_weights(name: str, log_pi, r, lengths, depth: int, group_size: int, eps: float = 1e-6):
  """[X, n] the per-sequence weight c(y) of ``name`` (module docstring)."""
  pi = np.exp(log_pi)
  value = (pi * r).sum(-1, keepdims=True)
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
  c = recipe_weights(name, log_pi, r, lengths, len(levels), group_size, eps)
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
