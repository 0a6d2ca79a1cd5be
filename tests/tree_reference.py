"""An independent brute-force reference for the token level: enumerate every sequence in NumPy.

It reads the tree-file object itself (not the parser's output), lists every response of every
prompt with its reference probability, data mass and reward (the reward rules coded again here),
and computes each quantity of THEORY.md part G by summing over sequences and, for gradients, over
sequences × positions (REINFORCE identities written out per token). Policies are given as
per-node logit rows keyed by prefix (tuples of token ids).
"""

from __future__ import annotations

import dataclasses

import mpmath
import numpy as np


@dataclasses.dataclass
class Prompt:
  k: int
  eos: int
  t_max: int
  support: dict        # prefix -> bool [k] (children with reference > 0)
  ref_rows: dict       # prefix -> [k] reference conditionals
  leaves: list         # responses (tuples)
  rho: np.ndarray      # [n_leaves] reference sequence probabilities
  data: np.ndarray     # [n_leaves]
  reward: np.ndarray   # [n_leaves]


def _ids(vocab, tokens):
  return tuple(vocab.index(s) for s in tokens)


def _reward_value(rule: dict, y: tuple, vocab, eos, demos) -> float:
  if "table" in rule:
    table = {_ids(vocab, e["tokens"]): e["value"] for e in rule["table"]}
    return float(table.get(y, rule.get("default", 0.0)))
  kind = rule["rule"]
  if kind == "exact_match":
    return float(rule.get("correct", 1.0) if y in demos else rule.get("incorrect", 0.0))
  if kind == "final_answer":
    ans = vocab.index(rule["answer"])
    ok = len(y) >= 2 and y[-1] == eos and y[-2] == ans
    return float(rule.get("correct", 1.0) if ok else rule.get("incorrect", 0.0))
  return float(rule.get("base", 0.0) - rule.get("per_token", 0.1) * len(y))


def prompts_of(raw: dict) -> list[Prompt]:
  out = []
  for p in raw["prompts"]:
    vocab = p.get("vocab", raw.get("vocab"))
    eos = vocab.index(p.get("eos", raw.get("eos")))
    t_max = p.get("max_length", raw.get("max_length"))
    k = len(vocab)
    ref = p["reference"]
    if "nodes" in ref:
      rows = {}
      for e in ref["nodes"]:
        row = np.zeros(k)
        for s, v in e["probs"].items():
          row[vocab.index(s)] = v
        rows[_ids(vocab, e["prefix"])] = row
      leaves, probs, stack = [], [], [((), 1.0)]
      while stack:
        s, ps = stack.pop()
        for a in range(k):
          if rows[s][a] > 0:
            y = s + (a,)
            if a == eos or len(y) == t_max:
              leaves.append(y)
              probs.append(ps * rows[s][a])
            else:
              stack.append((y, ps * rows[s][a]))
      table = dict(zip(leaves, probs))
    else:
      table = {_ids(vocab, e["tokens"]): e["p"] for e in ref["sequences"] if e["p"] > 0}
      mass = {}
      for y, v in table.items():
        for t in range(len(y)):
          mass.setdefault(y[:t], np.zeros(k))[y[t]] += v
      rows = {s: m / m.sum() for s, m in mass.items()}
    leaves = sorted(table)
    data = np.zeros(len(leaves))
    for e in p["data"]:
      data[leaves.index(_ids(vocab, e["tokens"]))] += e.get("weight", 1.0)
    data /= data.sum()
    demos = {leaves[i] for i in np.flatnonzero(data > 0)}
    reward = np.array([_reward_value(p["reward"], y, vocab, eos, demos) for y in leaves])
    support = {s: row > 0 for s, row in rows.items()}
    out.append(Prompt(k, eos, t_max, support, rows, leaves, np.array([table[y] for y in leaves]),
                      data, reward))
  return out


def softmax_rows(p: Prompt, logits: dict) -> dict:
  """prefix -> π(·|s) (softmax over the support of the node)."""
  out = {}
  for s, sup in p.support.items():
    z = np.where(sup, logits[s], -np.inf)
    z = z - z[sup].max()
    e = np.where(sup, np.exp(z), 0.0)
    out[s] = e / e.sum()
  return out


def seq_probs(p: Prompt, rows: dict) -> np.ndarray:
  return np.array([np.prod([rows[y[:t]][y[t]] for t in range(len(y))]) for y in p.leaves])


def kl(a: np.ndarray, b: np.ndarray) -> float:
  m = a > 0
  return float(np.sum(a[m] * (np.log(a[m]) - np.log(b[m]))))


def log_partition_mp(p: Prompt, beta: float, digits: int = 50) -> float:
  """log Σ_y ρ(y) e^{r(y)/β} in mpmath at ``digits`` significant digits.

  The exponent r/β is rounded to float64 first: that rounding (up to 6e-11 absolute at the
  domain's edge |r|/β = 1e6) is the input's, as THEORY.md's domain states, not the engine's.
  """
  with mpmath.workdps(digits):
    z = mpmath.fsum(mpmath.mpf(float(r)) * mpmath.exp(mpmath.mpf(float(v) / float(beta)))
                    for r, v in zip(p.rho, p.reward))
    return float(mpmath.log(z))


def log_gibbs_mp(p: Prompt, beta: float, digits: int = 50) -> list:
  """log π*_β(y) = log ρ(y) + r(y)/β − log Z in mpmath (r/β rounded to float64 first)."""
  with mpmath.workdps(digits):
    q = [mpmath.log(mpmath.mpf(float(r))) + mpmath.mpf(float(v) / float(beta))
         for r, v in zip(p.rho, p.reward)]
    log_z = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in q))
    return [float(v - log_z) for v in q]


def gibbs(p: Prompt, beta: float) -> np.ndarray:
  z = np.log(p.rho) + p.reward / beta
  z -= z.max()
  e = np.exp(z)
  return e / e.sum()


def score_grad(p: Prompt, rows: dict, weight: np.ndarray) -> dict:
  """Σ_y π(y) w(y) ∇_θ log π(y), written out per position: prefix -> [k]."""
  pi = seq_probs(p, rows)
  out = {s: np.zeros(p.k) for s in p.support}
  for y, py, wy in zip(p.leaves, pi, weight):
    if py == 0.0:  # underflow at the domain's edge: the term is 0 (w is finite there)
      continue
    for t in range(len(y)):
      s = y[:t]
      e = np.zeros(p.k)
      e[y[t]] = 1.0
      out[s] += py * wy * (e - rows[s])
  return out


def token_loss_grad(p: Prompt, rows: dict, slope) -> dict:
  """Σ_y π(y) Σ_t c(y_t|s_t)(e_{y_t} − π(·|s_t)) with c = slope(π(a|s), ρ(a|s))."""
  pi = seq_probs(p, rows)
  out = {s: np.zeros(p.k) for s in p.support}
  for y, py in zip(p.leaves, pi):
    if py == 0.0:  # underflow at the domain's edge: π c(π) → 0 there
      continue
    for t in range(len(y)):
      s, a = y[:t], y[t]
      e = np.zeros(p.k)
      e[a] = 1.0
      out[s] += py * slope(rows[s][a], p.ref_rows[s][a]) * (e - rows[s])
  return out


def token_value_sum(p: Prompt, rows: dict, value) -> float:
  """Σ_y π(y) Σ_t value(π(y_t|s_t), ρ(y_t|s_t))."""
  pi = seq_probs(p, rows)
  return float(sum(py * sum(value(rows[y[:t]][y[t]], p.ref_rows[y[:t]][y[t]])
                            for t in range(len(y))) for y, py in zip(p.leaves, pi)))


def subtree_kl(p: Prompt, rows: dict, s: tuple) -> float:
  """KL(π‖ρ) of the responses below prefix s, conditioned on s (0 at a leaf)."""
  below = [i for i, y in enumerate(p.leaves) if y[:len(s)] == s and len(y) > len(s)]
  if not below:
    return 0.0
  pi = seq_probs(p, rows)[below]
  rho = p.rho[below]
  return kl(pi / pi.sum(), rho / rho.sum())
