"""The bridge: a pure-JAX Qwen3 that reads a Hugging Face checkpoint (config.json, *.safetensors,
tokenizer.json) without torch, scores candidates, and turns real logits into the same instances
(plus linear-head features) that theory/ checks. Runs unchanged on CPU, GPU or TPU.

Modules: config (config.json), checkpoint (safetensors -> weights pytree), qwen3 (the forward
pass), tokenizer (tokenizer.json, ChatML), scoring (bucketed, sharded log-probabilities), cola
(CoLA loader), examples (a built-in CoLA-style set), extract (model -> instance file), experiment
(the paper's two pipelines with a shared linear head), demo (a random tiny Qwen3), cli.
"""
