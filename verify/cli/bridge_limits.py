"""The resource limits of the bridge commands: memory and time estimated from the model's config
and the tokenised prompts, before the weights are loaded (see :mod:`..budget`)."""

from __future__ import annotations

from pathlib import Path

from .. import budget
from ..bridge.cola import Example
from ..bridge.config import read_config
from ..bridge.extract import CHAT_LABELS, LABELS, render_prompt
from ..bridge.scoring import bucket_length, prompt_ids
from ..bridge.tokenizer import encode, load_tokenizer
from .limits import limits

__all__ = ["require_bridge", "cola_prompts"]


def _bridge_sizes(prompts: list[list[int]], candidates: list[list[int]], batch_size: int,
                  devices: int) -> tuple[int, int, int]:
  """(rows, padded tokens, tokens in the largest batch) as scoring will run them."""
  single = all(len(c) == 1 for c in candidates)
  longest = max(len(c) for c in candidates)
  lengths = sorted(len(p) + (0 if single else longest) for p in prompts)
  rows = len(lengths) * (1 if single else len(candidates))
  batch = -(-max(1, batch_size) // devices) * devices
  padded = 0
  for lo in range(0, len(lengths), batch):
    padded += batch * bucket_length(lengths[min(lo + batch, len(lengths)) - 1])
  padded *= 1 if single else len(candidates)
  return rows, padded, batch * bucket_length(lengths[-1])


def require_bridge(args, model_dir, prompts: list[str], candidates: list[str], chat: bool,
                   devices: int, experiment: bool = False) -> None:
  """Refuses a bridge job (score, extract, experiment) over its limits.

  Args:
    prompts: the prompt texts; candidates: the candidate texts.
    chat: render the prompts as ChatML user turns (score's --chat; extraction prompts come
      rendered, see :func:`cola_prompts`).
    devices: local devices the weights are replicated over.
  """
  cfg = read_config(model_dir)  # the files in the order load_model reads them: same errors
  tok = load_tokenizer(model_dir)
  p_ids = [prompt_ids(tok, p, chat) or [0] for p in prompts]
  c_ids = [encode(tok, c) or [0] for c in candidates]
  rows, padded, batch_tokens = _bridge_sizes(p_ids, c_ids, args.batch_size, devices)
  params = budget.qwen3_params(cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size,
                               cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                               cfg.tie_word_embeddings)
  per_token = budget.qwen3_token_flops(cfg.hidden_size, cfg.intermediate_size, cfg.num_layers,
                                       cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                       bucket_length(max(len(p) for p in p_ids)))
  flops = per_token * padded + 2.0 * rows * cfg.hidden_size * cfg.vocab_size
  est = budget.bridge_cost(
      f"bridge {args.bridge_command} on {rows} row{'' if rows == 1 else 's'} ({padded} padded "
      f"tokens) with "
      f"{Path(str(model_dir)).name} ({params / 1e6:.3g}M parameters)", params,
      4 if args.dtype == "float32" else 2, devices, flops, rows, batch_tokens, cfg.hidden_size,
      cfg.intermediate_size, experiment)
  budget.require(est, limits(args))


def cola_prompts(examples: list[Example], chat: bool) -> tuple[list[str], list[str]]:
  """(rendered prompts, label words) of the CoLA extraction (as verify/bridge/extract.py)."""
  return [render_prompt(e.sentence, chat) for e in examples], list(CHAT_LABELS if chat
                                                                    else LABELS)
