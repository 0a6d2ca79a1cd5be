"""The obvious NumPy/SciPy way to the start-node recipes' expected fields on a tree: over
sequences × positions.

UFT, Prefix-RFT and BREAD draw continuations from start nodes s = y_<d on the paths of the
demonstrations. Over sequences, every (sequence y, depth d) pair names the start node y_<d and the
continuation law π(y | y_<d) = exp(Σ_{t ≥ d} log π(y_t|y_<t)) (a reverse cumulative sum of the
per-position log-probabilities); a per-node quantity (a success probability, a visit count, a
start law) is a sum over the (y, d) pairs at that node, one sparse product with the
position-node incidence for the whole batch; the field is Σ_{y, t} c(y, t) (e_{y_t} − π(·|y_<t))
with c(y, t) = Σ_{d ≤ t} ω(y_<d) π(y|y_<d) A(y_<d, r(y)) (a cumulative sum over d), the slot sums
one sparse product with the position-slot incidence. Vectorised over prompts, sequences and
positions (Python loops only over the depth T ≤ 5 for Prefix-RFT's entropy mask): the strongest
baseline a researcher would write without a tree engine. For a 0/1 reward (the benchmark's), the
group advantage of a start node is a table over the two rewards from the binomial of the others'
successes.

- BREAD (G rollouts, GRPO with std, group used iff K ≥ 1): ω(root) = 1 and ω(y*_{<l}) =
  d(y*) f(root) Π_{1≤j<l} f(y*_{<j}) for 1 ≤ l < |y*|, f(s) = (1 − p(s))^G;
- UFT (G continuations with std below the hint node, hint length h from the schedule's binomial
  cut): ω(y*_{<h}) = d(y*) P(h | |y*|) for h < |y*|, the hint tokens' SFT term c_s d(y*)
  P(h > t | |y*|), and the continuations' entropy bonus and k3-KL at the visited nodes
  V(u) = Σ_{(y, t): y_<t = u} Σ_{d ≤ t} ω(y_<d) π(y|y_<d);
- Prefix-RFT (n_on on-policy + one hybrid, Dr.GRPO): the on-policy term n_on π(y) Ā_on(y) along
  every path, the continuation from ω(y*_{<l}) = d(y*) P(l | |y*|) with weight (n_on/(n_on+1))
  (r(y) − V), and the prefix tokens t < l with the top-⌈keep·l⌉ entropy mask and φ_t = π(y*_t|·).

All are multiplied by the prompt weight w_x, as the library's fields are.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.special import betainc
from scipy.stats import binom

from bench.numpy_sequences import _flat, _log_softmax_rows

__all__ = ["bread_field", "uft_field", "prefix_rft_field"]


def _terms(levels, theta, flat, mask):
  """Everything over sequences × positions: a dict of per-level rows and [X, n, T] arrays."""
  valid = [lv["leaf"] | lv["internal"] for lv in levels]
  log_rows = [_log_softmax_rows(th, v) for th, v in zip(theta, valid)]
  lp_slots = _flat([np.where(v, lp, 0.0) for v, lp in zip(valid, log_rows)], 0.0)
  n_slots = lp_slots.shape[1]
  k = levels[0]["leaf"].shape[-1]
  n, depth = flat.shape
  node = np.where(mask, flat // k, (n_slots - 1) // k + 1)                 # y_<t; a dummy column
  n_nodes = (n_slots - 1) // k + 2
  rows = np.arange(n * depth)
  node_matrix = sp.csr_matrix((np.ones(n * depth), (rows, node.ravel())), shape=(n * depth, n_nodes))
  slot_matrix = sp.csr_matrix((mask.ravel().astype(float), (rows, flat.ravel())),
                              shape=(n * depth, n_slots))
  lp = lp_slots[:, flat]                                                   # [X, n, T], 0 padded
  log_q = np.cumsum(lp[..., ::-1], axis=-1)[..., ::-1]                     # log π(y | y_<d)
  leaf_at = flat[np.arange(n), mask.sum(1) - 1]
  return {
      "valid": valid, "log_rows": log_rows, "mask": mask, "node": node,
      "node_matrix": node_matrix, "slot_matrix": slot_matrix, "x": lp.shape[0],
      "q": np.where(mask[None], np.exp(log_q), 0.0), "pi": np.exp(log_q[..., 0]),
      "step": np.where(mask[None], np.exp(lp), 0.0),
      "r": _flat([lv["reward"] for lv in levels], 0.0)[:, leaf_at],
      "d": _flat([lv["data"] for lv in levels], 0.0)[:, leaf_at],
      "length": mask.sum(1),
  }


def _per_node(s, values):
  """[X, nodes] Σ over the (y, t) pairs at each node of values [X, n, T]."""
  return np.asarray((s["node_matrix"].T @ values.reshape(s["x"], -1).T).T)


def _at_nodes(s, per_node):
  """[X, n, T] a per-node array [X, nodes] read at every position's node."""
  return per_node[:, s["node"]]


def _pullback(s, coef, node_rows=()):
  """Per level [X, N_t, k]: Σ_{y,t} coef(y, t)(e_{y_t} − π(·|y_<t)) + Σ_u V(u) Σ_a R_a(e_a − π)
  for each (V [X, nodes], rows R per level) in ``node_rows``."""
  slots = np.asarray((s["slot_matrix"].T @ coef.reshape(s["x"], -1).T).T)  # [X, slots]
  out, start, node_start = [], 0, 0
  for v, lp in zip(s["valid"], s["log_rows"]):
    x, n_rows, k = v.shape
    c = slots[:, start:start + n_rows * k].reshape(x, n_rows, k)
    for visits, rows in node_rows:
      c = c + visits[:, node_start:node_start + n_rows, None] * np.where(v, rows[len(out)], 0.0)
    pi = np.where(v, np.exp(lp), 0.0)
    out.append(np.where(v, c - pi * c.sum(-1, keepdims=True), 0.0))
    start += n_rows * k
    node_start += n_rows
  return out


def _std_table(p, group: int, eps: float, gate_low: int):
  """[..., 2] E[Â 1{K ≥ gate_low} | r] with std for a 0/1 reward, others ∼ Binomial(G − 1, p)."""
  j = np.arange(group)
  pmf = binom.pmf(j, group - 1, p[..., None])                              # [..., G]
  own = np.array([0.0, 1.0])[:, None]
  total = own + j[None, :]                                                 # [2, G]
  std = np.sqrt(np.maximum(total - total * total / group, 0.0) / max(group - 1, 1))
  adv = np.where(total >= gate_low, (own - total / group) / (std + eps), 0.0)
  return pmf @ adv.T


def _continuation(s, omega, adv_table):
  """[X, n, T] c(y, t) = Σ_{d ≤ t} ω(y_<d) π(y|y_<d) A(y_<d, r(y)) (adv_table [X, nodes, 2])."""
  r = s["r"].astype(np.int64)[..., None]
  adv = np.take_along_axis(adv_table[:, s["node"], :],
                           np.broadcast_to(r[..., None], s["q"].shape + (1,)), axis=-1)[..., 0]
  return np.cumsum(_at_nodes(s, omega) * s["q"] * adv, axis=-1)


def bread_field(levels, theta, w, flat, mask, group: int = 8, eps: float = 1e-6):
  """BREAD's expected field over sequences (module docstring), per level [X, N_t, k]."""
  s = _terms(levels, theta, flat, mask)
  if not np.all((s["r"] == 0.0) | (s["r"] == 1.0)):
    raise ValueError("the BREAD baseline needs a 0/1 reward")
  p = _per_node(s, s["q"] * s["r"][..., None])                             # π(r = 1 | s)
  fail = (1.0 - p) ** group
  depth = np.arange(mask.shape[1])
  f_path = np.where((depth >= 1) & mask, _at_nodes(s, fail), 1.0)
  before = np.cumprod(np.concatenate([np.ones_like(f_path[..., :1]), f_path[..., :-1]], -1), -1)
  weight = np.where((depth >= 1) & mask, s["d"][..., None] * fail[:, :1, None] * before, 0.0)
  omega = _per_node(s, weight)
  omega[:, 0] += 1.0
  coef = _continuation(s, omega, _std_table(p, group, eps, 1))
  return [group * w[:, None, None] * g for g in _pullback(s, coef)]


def _hint_table(p: float, segments: int, depth: int) -> np.ndarray:
  """[T + 1, T + 1] P(h = j | L) (row L; row 0 unused)."""
  out = np.zeros((depth + 1, depth + 1))
  for length in range(1, depth + 1):
    num = min(segments, length)
    cut = np.round(np.arange(num + 1) * length / num).astype(int)
    np.add.at(out[length], cut, binom.pmf(np.arange(num + 1), num, p))
  return out


def uft_field(levels, theta, w, flat, mask, group: int = 4, p: float = 0.95, segments: int = 5,
              sft_coef: float = 0.001, kl_coef: float = 0.001, entropy_coef: float = 0.001,
              eps: float = 1e-6):
  """UFT's expected field over sequences (module docstring), per level [X, N_t, k]."""
  s = _terms(levels, theta, flat, mask)
  if not np.all((s["r"] == 0.0) | (s["r"] == 1.0)):
    raise ValueError("the UFT baseline needs a 0/1 reward")
  depth = mask.shape[1]
  table = _hint_table(p, segments, depth)[s["length"]]                     # [n, T + 1]
  longer = np.cumsum(table[:, ::-1], axis=-1)[:, ::-1][:, 1:]              # P(h > t)
  d = s["d"][..., None]
  omega = _per_node(s, np.where(mask, d * table[None, :, :depth], 0.0))
  prob = _per_node(s, s["q"] * s["r"][..., None])
  coef = group * _continuation(s, omega, _std_table(prob, group, eps, 0))
  coef = coef + np.where(mask, sft_coef * d * longer[None], 0.0)
  visits = group * _per_node(s, np.cumsum(_at_nodes(s, omega) * s["q"], axis=-1))
  ent_rows = [np.where(v, -np.exp(lp) * lp, 0.0) for v, lp in zip(s["valid"], s["log_rows"])]
  rho_rows = [lv["reference"] for lv in levels]
  field = _pullback(s, coef, ((entropy_coef * visits, ent_rows), (kl_coef * visits, rho_rows)))
  return [w[:, None, None] * g for g in field]


def prefix_rft_field(levels, theta, w, flat, mask, n_on: int = 7, mean: float = 0.95,
                     kappa: float = 2.0, keep: float = 0.2):
  """Prefix-RFT's expected field over sequences (module docstring; ``ratio`` form, no entropy
  bonus, ``group_sum``), per level [X, N_t, k]."""
  s = _terms(levels, theta, flat, mask)
  n = n_on + 1
  depth = mask.shape[1]
  length = np.maximum(s["length"], 1)[:, None].astype(float)
  j = np.arange(depth + 1)[None, :]
  a, b = kappa * mean, kappa * (1.0 - mean)
  cdf = lambda v: betainc(a, b, np.clip(v, 0.0, 1.0))
  table = np.where(j < length, cdf((j + 1) / length) - cdf(j / length), 0.0)  # [n, T + 1]
  d = s["d"][..., None]
  r = s["r"]
  v = (s["pi"] * r).sum(-1)                                                # [X]
  omega = _per_node(s, np.where(mask, d * table[None, :, :depth], 0.0))
  v_node = _per_node(s, s["q"] * r[..., None])                             # E[r | s]
  r_h = (omega * v_node).sum(-1)
  on = n_on * s["pi"] * (r - (r + (n_on - 1) * v[:, None] + r_h[:, None]) / n)
  coef = np.where(mask, on[..., None], 0.0)
  cont = np.cumsum(_at_nodes(s, omega) * s["q"] * (n_on / n) * (r - v[:, None])[..., None], -1)
  # the prefix tokens: node entropies along the path, the top-⌈keep·l⌉ mask per prefix length l
  ent = _flat([np.where(vv, -np.exp(lp) * lp, 0.0).sum(-1, keepdims=True).repeat(vv.shape[-1], -1)
               for vv, lp in zip(s["valid"], s["log_rows"])], 0.0)[:, flat]  # H(π(·|y_<t))
  w_pre = d * table[None, :, :depth] * (n_on / n) * (_at_nodes(s, v_node) - v[:, None, None])
  pre = np.zeros_like(coef)
  t = np.arange(depth)
  for l in range(1, depth):
    h = ent[..., :l]
    beats = (h[..., None, :] > h[..., :, None]) | ((h[..., None, :] == h[..., :, None])
                                                   & (t[None, :l] < t[:l, None]))
    top = beats.sum(-1) < math.ceil(keep * l - 1e-9)                      # [X, n, l]
    here = np.where(l < s["length"], w_pre[..., l], 0.0)[..., None]
    pre[..., :l] += here * top * s["step"][..., :l]
  coef = coef + np.where(mask, cont + pre, 0.0)
  return [w[:, None, None] * g for g in _pullback(s, coef)]
