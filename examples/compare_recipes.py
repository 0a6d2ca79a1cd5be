"""Train every fusion recipe with its exact field and compare where each ends.

Run: python examples/compare_recipes.py
"""

import nondecoupling as nd

inst = nd.make_instance(
    prompt_weights=[0.4, 0.3, 0.3],
    data=[[0.6, 0.4, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.9, 0.1]],
    reward=[[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
    beta=0.2,
    reference=[[0.5, 0.3, 0.1, 0.1], [0.1, 0.4, 0.4, 0.1], [0.1, 0.1, 0.7, 0.1]])

print(f"{'recipe':10s} {'SFT loss':>10s} {'reward':>8s} {'regret':>8s}")
for name in nd.FUSION_RECIPES:
  log_pi, _ = nd.train_recipe(inst, name, steps=100, lr=2.0)
  print(f"{name:10s} {float(nd.sft_loss(inst, log_pi)):10.4f} {float(nd.reward(inst, log_pi)):8.4f}"
        f" {float(nd.decoupling_regret(inst, log_pi)):8.4f}")
