"""G2: the length bias of token-mean SFT (this project's).

Token-mean SFT (each sequence's loss over its own length) has the optimum π_mean ∝ d(y)/|y|
(THEORY.md G2): it moves mass to short responses. On a chain tree (tokens EOS, a; y = a^{L−1}·EOS)
with data split evenly between lengths c − s and c + s, E_d|y| = c for every spread s while
E_{π_mean}|y| = 1/E_d(1/|y|) (the harmonic mean) falls, and the SFT excess
E_d log|y| + log E_d(1/|y|) grows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..theory.tree.build import PromptTree, build_tree
from ..theory.tree.fields import expected_to_go
from ..theory.tree.instance import TreeInstance, stack_trees
from ..theory.tree.objectives import data_log_policy, expect
from ..theory.tree.policy import leaf_lengths
from ..theory.tree.rewards import length_penalty_reward
from ..theory.tree.sft import token_mean_excess, token_mean_optimum

__all__ = ["chain_tree", "length_bias", "FIGURES"]


def chain_tree(center: int, spread: int, max_length: int) -> TreeInstance:
  """One prompt, tokens (EOS, a), ρ = ½ each; data ½ on a^{c−s−1}·EOS and ½ on a^{c+s−1}·EOS.

  >>> chain_tree(3, 1, 5).depth
  5
  """
  rows = {(1,) * t: [0.5, 0.5] for t in range(max_length)}
  seq = lambda n: (1,) * (n - 1) + (0,)
  data = {seq(center - spread): 0.5}
  data[seq(center + spread)] = data.get(seq(center + spread), 0.0) + 0.5
  prompt = PromptTree(2, 0, max_length, rows, data, length_penalty_reward(0.0, 0.0))
  tree, _ = build_tree([prompt], [1.0], 1.0)
  return jax.tree.map(jnp.asarray, tree)


def _lengths(tree):
  length = lambda lp: expect(tree, expected_to_go(tree, lp, leaf_lengths(tree))[1][0][..., 0])
  return (length(data_log_policy(tree)), length(token_mean_optimum(tree)),
          token_mean_excess(tree))


def length_bias(center: int = 6, max_length: int = 12) -> Figure:
  """E|y| under d and under the token-mean optimum, and the SFT excess, against the spread.

  Args:
    center: c, the mean data length.
    max_length: T (≥ 2c − 1).

  Returns:
    The figure.
  """
  spreads = np.arange(center)
  trees = stack_trees([chain_tree(center, int(s), max_length) for s in spreads])
  d_len, mean_len, excess = (np.asarray(a) for a in jax.vmap(_lengths)(trees))
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.plot(spreads, d_len, "o-", color="k", lw=2, label=r"$E_d|y|$ (token-sum SFT optimum)")
  ax.plot(spreads, mean_len, "s--", color="tab:red", lw=2,
          label=r"$E_{\pi_{mean}}|y|$, $\pi_{mean}\propto d/|y|$ (token-mean SFT)")
  ax.set_xlabel(f"length spread s (data ½ at length {center} − s, ½ at {center} + s)")
  ax.set_ylabel("expected length |y| (tokens, EOS counted)")
  ax.grid(True, alpha=0.25)
  twin = ax.twinx()
  twin.plot(spreads, excess, "^:", color="tab:blue", label=r"SFT excess $L(\pi_{mean}) - L(d)$")
  twin.set_ylabel("SFT excess (nats)", color="tab:blue")
  lines = ax.get_legend_handles_labels()
  more = twin.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center left")
  ax.set_title("Token level (this project's G2): token-mean SFT shortens responses", fontsize=10)
  fig.tight_layout()
  return fig


FIGURES = {"tree_sft_length": length_bias}
