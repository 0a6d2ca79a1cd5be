"""Score candidates with a Qwen3 checkpoint in pure JAX (no torch).

Run: python examples/score_with_checkpoint.py [MODEL_DIR]
Without MODEL_DIR a small random Qwen3 is built in a temporary folder (random weights are not a
language model: the numbers show the plumbing). With the real Qwen/Qwen3-0.6B folder
(config.json, model.safetensors, tokenizer.json) the same call scores with the real model.
"""

import sys
import tempfile

from nondecoupling.verify.bridge.demo import build_demo_model
from nondecoupling.verify.bridge.extract import LABELS, render_prompt
from nondecoupling.verify.bridge.scoring import score_candidates

prompt = render_prompt("the cat sat on the mat .")
with tempfile.TemporaryDirectory() as tmp:
  model = sys.argv[1] if len(sys.argv) > 1 else build_demo_model(tmp + "/model")
  result = score_candidates(model, prompt, list(LABELS))
for candidate, logprob in zip(result["candidates"], result["logprobs"]):
  print(f"log p({candidate!r} | prompt) = {logprob:.4f}")
