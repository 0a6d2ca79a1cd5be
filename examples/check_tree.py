"""Check one tree file from Python: C1 on the leaf set, the token-mean SFT bias (G2), and where
the three KL placements end (G4) against the Gibbs tilt, with their frontier regret.

Run: python examples/check_tree.py [TREE.json]
(default: examples/tree_final_answer.json)
"""

import sys
from pathlib import Path

import jax

import nondecoupling as nd
from nondecoupling.theory.tree import bellman, fixed_points, sft
from nondecoupling.verify.tree_io import read_tree

nd.enable_compile_cache()  # compiled programs kept on disk, as the command line does

path = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "tree_final_answer.json"
tree = read_tree(path).tree


@jax.jit  # one compiled program (called eagerly, each primitive compiles on its own)
def report(tree):
  fixed = {c: fixed_points.fixed_point_report(tree, fixed_points.closed_form_fixed_point(tree, c))
           for c in fixed_points.CONSTRUCTS}
  return bellman.c1(tree), sft.token_mean_excess(tree), fixed


c1, excess, fixed = report(tree)
print(f"C1(beta; rho) on the leaf set: {float(c1):.6g}")
print(f"token-mean SFT excess L(pi_mean) - L(d) (G2): {float(excess):.6g}")
for construct, r in fixed.items():
  print(f"{construct:10s} SFT loss {float(r['sft_loss']):.6f}  reward {float(r['reward']):.6f}  "
        f"J_beta {float(r['regularized_reward']):.6f}  regret {float(r['regret']):.6f}  "
        f"KL to pi* {float(r['kl_to_optimum']):.3e}")
