"""The obvious NumPy way to the exact token-level quantities: enumerate the sequences, sum over
positions.

Every leaf y = a_1 … a_n of a prompt's tree is listed once as the path of (level, row, slot) it
takes (padded to the maximum length T with a slot of log-probability 0); the per-position
log-probabilities of the policy and of the reference are gathered along the paths and summed,
so log π(y|x) and log ρ(y|x) are arrays [X, leaves] and every quantity is a sum over them:

  L = −E_w Σ_y d log π,  J = E_w Σ_y π r,  KL(π‖ρ) = Σ_y π (log π − log ρ),
  log Z = log Σ_y ρ e^{r/β}  (per prompt).

Vectorised over prompts and sequences (no Python loop over either); the paths are listed once
per tree shape (the complete tree: every prompt has the same shape).
"""

from __future__ import annotations

import numpy as np

__all__ = ["sequence_paths", "sequence_quantities"]


def sequence_paths(levels: list[dict], x: int = 0):
  """The leaves of prompt ``x``'s tree as padded paths.

  Args:
    levels: per level t, numpy arrays "leaf", "internal", "child" of shape [X, N_t, k].
    x: the prompt whose tree shape is walked.

  Returns:
    (flat [n, T] int64 index into the concatenated per-level slot axis (Σ_t N_t k, plus one
    padding slot at the end), mask [n, T] bool of real positions).
  """
  offsets = np.cumsum([0] + [lv["leaf"][x].size for lv in levels])
  pad = int(offsets[-1])
  paths: list[list[int]] = []
  frontier = [(0, 0, [])]
  while frontier:
    t, row, prefix = frontier.pop()
    lv = levels[t]
    k = lv["leaf"].shape[-1]
    for a in np.flatnonzero(lv["leaf"][x, row] | lv["internal"][x, row]):
      here = prefix + [int(offsets[t] + row * k + a)]
      if lv["leaf"][x, row, a]:
        paths.append(here)
      else:
        frontier.append((t + 1, int(lv["child"][x, row, a]), here))
  depth = len(levels)
  flat = np.full((len(paths), depth), pad, np.int64)
  for i, p in enumerate(paths):
    flat[i, :len(p)] = p
  return flat, flat != pad


def _log_softmax_rows(theta, valid):
  z = np.where(valid, theta, -np.inf)
  top = z.max(-1, keepdims=True)
  return z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))


def _flat(arrays, fill):
  """[X, Σ_t N_t k + 1]: per-level [X, N_t, k] arrays side by side, one padding slot of ``fill``."""
  x = arrays[0].shape[0]
  return np.concatenate([a.reshape(x, -1) for a in arrays] + [np.full((x, 1), fill)], axis=1)


def sequence_quantities(levels: list[dict], theta: list[np.ndarray], w: np.ndarray, beta: float,
                        flat: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  """L, J, KL(π‖ρ) per prompt and log Z per prompt, with every prompt's tree of the same shape.

  Args:
    levels: per level, numpy arrays "leaf", "internal", "reference", "data", "reward" [X, N_t, k].
    theta: per level, the policy's logits [X, N_t, k].
    w: [X] prompt weights; beta: β.
    flat, mask: [n, T] paths and their real positions from :func:`sequence_paths`.

  Returns:
    {"L": [], "J": [], "KL": [X], "log_Z": [X]}.
  """
  valid = [lv["leaf"] | lv["internal"] for lv in levels]
  log_pi_slots = _flat([_log_softmax_rows(th, v) for th, v in zip(theta, valid)], 0.0)
  with np.errstate(divide="ignore"):
    log_rho_slots = _flat([np.log(lv["reference"]) for lv in levels], 0.0)
  leaf_at = flat[np.arange(len(flat)), mask.sum(1) - 1]                    # the last position
  log_pi = log_pi_slots[:, flat].sum(-1)                                    # [X, n]
  log_rho = log_rho_slots[:, flat].sum(-1)
  d = _flat([lv["data"] for lv in levels], 0.0)[:, leaf_at]
  r = _flat([lv["reward"] for lv in levels], 0.0)[:, leaf_at]
  pi = np.exp(log_pi)
  z = log_rho + r / beta
  top = z.max(-1, keepdims=True)
  return {
      "L": -w @ np.where(d > 0, d * log_pi, 0.0).sum(-1),
      "J": w @ (pi * r).sum(-1),
      "KL": (pi * (log_pi - log_rho)).sum(-1),
      "log_Z": (top + np.log(np.exp(z - top).sum(-1, keepdims=True)))[:, 0],
  }
