"""Check one instance from Python: every quantity and the margin of every statement.

Run: python examples/check_instance.py [INSTANCE.json]
(default: examples/instances/readme_instance.json)
"""

import sys
from pathlib import Path

import nondecoupling as nd

# Keep compiled programs on disk (~/.cache/nondecoupling/jax, or $NONDECOUPLING_CACHE_DIR), as the
# command line does: a second run skips XLA's compilation.
nd.enable_compile_cache()

path = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "instances/readme_instance.json"
inst, labels = nd.read_instance(path)

quantities = nd.check_quantities(inst)
print(f"C1 of Theorem 3.1 (rho = d): {float(quantities['c1_sft_then_rl']):.6g}")
print(f"C1(beta; rho) (this project's D1): {float(quantities['c1']):.6g}")
print(f"critical beta (D1): {float(quantities['beta_critical']):.6g}")
print(f"optimal RL value beta E log Z: {float(quantities['rl_value']):.6g}")

for name, m in nd.instance_margins(inst).items():
  status = "n/a" if not m["applies"] else ("holds" if m["holds"] else "FAILS")
  print(f"{name:40s} {m['source']:5s} margin {m['margin']: .3e}  {status}")
