"""An independent brute-force reference for the group recipes on trees (THEORY.md G5): NumPy only.

Every ORDERED group of G leaves (|leaves|^G of them) is listed with its probability under π_old; each
response gets its advantage (NumPy mean and ``ddof=1`` std, verl's group-of-one rule) and its length
normaliser (verl's ``agg_loss`` modes, with G5's 1/(G T) for the constant one), and every token of
every response adds its ascent term 1_stable ρ Â n (e_a − π(·|s)) at its prefix, and the KL loss
term n c(a|s) (e_a − π(·|s)) — written out per token, as a trainer's autodiff would produce them.
Policies are per-prefix rows (tests/tree_reference.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import tree_reference as ref


def advantages(rewards: np.ndarray, use_std: bool, eps: float) -> np.ndarray:
  """Â_i of a group (verl: a group of one has mean 0 and std 1)."""
  if rewards.size == 1:
    return rewards / (1.0 + eps) if use_std else rewards.copy()
  adv = rewards - rewards.mean()
  if use_std:
    adv = adv / (rewards.std(ddof=1) + eps)
  return adv


def normalisers(mode: str, lengths: np.ndarray, t_max: float) -> np.ndarray:
  g = lengths.size
  if mode == "seq-mean-token-mean":
    return 1.0 / (g * lengths)
  if mode == "token-mean":
    return np.full(g, 1.0 / lengths.sum())
  if mode == "seq-mean-token-sum-norm":
    return np.full(g, 1.0 / (g * t_max))
  return np.full(g, 1.0 / g)


def group_field(p: ref.Prompt, rows: dict, rows_old: dict, *, group_size: int, mode: str,
                use_std: bool, eps: float, t_max: float, clip=None, advantage: str = "group",
                kl_coef: float = 0.0, kl_slope=None, kl_reward: bool = False) -> dict:
  """prefix -> [k]: E over ordered groups from π_old of the trainer's ascent direction.

  Args:
    p: the prompt; rows, rows_old: π and π_old per prefix.
    clip: (ε_lo, ε_hi) to apply the per-token clip mask, or None.
    advantage: "group" or "value" (r − E_old r).
    kl_coef, kl_slope: a KL loss c(π(a|s), ρ(a|s)) aggregated with the normalisers.
    kl_reward: put −kl_coef Σ_t log(π_old/ρ) into the rewards.
  """
  pi_old = ref.seq_probs(p, rows_old)
  lengths = np.array([len(y) for y in p.leaves], float)
  reward = p.reward.copy()
  if kl_reward:
    k1 = np.array([sum(np.log(rows_old[y[:t]][y[t]]) - np.log(p.ref_rows[y[:t]][y[t]])
                       for t in range(len(y))) for y in p.leaves])
    reward = reward - kl_coef * k1
  value = float(np.sum(pi_old * reward))
  out = {s: np.zeros(p.k) for s in p.support}
  for group in itertools.product(range(len(p.leaves)), repeat=group_size):
    g = np.array(group)
    prob = float(np.prod(pi_old[g]))
    if prob == 0.0:
      continue
    adv = advantages(reward[g], use_std, eps) if advantage == "group" else reward[g] - value
    norm = normalisers(mode, lengths[g], t_max)
    for i, leaf in enumerate(g):
      y = p.leaves[leaf]
      for t in range(len(y)):
        s, a = y[:t], y[t]
        e = np.zeros(p.k)
        e[a] = 1.0
        score = e - rows[s]
        ratio = rows[s][a] / rows_old[s][a]
        stable = True
        if clip is not None:
          stable = not ((adv[i] > 0 and ratio > 1.0 + clip[1])
                        or (adv[i] < 0 and ratio < 1.0 - clip[0]))
        if stable:
          out[s] += prob * ratio * adv[i] * norm[i] * score
        if kl_slope is not None:
          out[s] -= prob * kl_coef * norm[i] * kl_slope(rows[s][a], p.ref_rows[s][a]) * score
  return out
