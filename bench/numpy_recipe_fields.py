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

with V(x) = E_π r. Both are multiplied by the prompt weight w_x, as the library's fields are.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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


def recipe_weights(name: str, log_pi, r, lengths, depth: int, group_size: int):
  """[X, n] the per-sequence weight c(y) of ``name`` (module docstring)."""
  pi = np.exp(log_pi)
  value = (pi * r).sum(-1, keepdims=True)
  if name == "dr_grpo":
    return (group_size - 1) / (group_size * depth) * (r - value)
  if name == "ppo_clip":
    return (r - value) / lengths[None, :]
  raise KeyError(name)


def recipe_field(name: str, levels, theta, w, flat, mask, group_size: int):
  """The expected field of ``name`` over sequences, per level [X, N_t, k] (prompt weights in)."""
  log_pi_slots = _flat([_log_softmax_rows(th, lv["leaf"] | lv["internal"])
                        for th, lv in zip(theta, levels)], 0.0)
  path_matrix = incidence(flat, mask, log_pi_slots.shape[1])
  log_pi = np.asarray((path_matrix @ log_pi_slots.T).T)                   # [X, n]
  leaf_at = flat[np.arange(len(flat)), mask.sum(1) - 1]
  r = _flat([lv["reward"] for lv in levels], 0.0)[:, leaf_at]
  c = recipe_weights(name, log_pi, r, mask.sum(1).astype(np.float64), len(levels), group_size)
  return sequence_weighted_field(levels, theta, w[:, None] * np.exp(log_pi) * c, path_matrix)
