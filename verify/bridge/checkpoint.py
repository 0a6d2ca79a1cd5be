"""Qwen3 safetensors checkpoints, read without torch, into a pytree of JAX arrays.

Reading: ``safetensors.safe_open(..., framework="numpy")`` (bfloat16 arrives as
``ml_dtypes.bfloat16``, which is why ``ml_dtypes`` is imported first). Every expected tensor name
and shape is checked against the config; missing and unexpected tensors are reported together in one
line. The head: tied (``tie_word_embeddings``) uses ``model.embed_tokens.weight``, as transformers
does; a stored ``lm_head.weight`` is then compared with it (the official Qwen3-0.6B file stores
both) and a ``UserWarning`` says so if they differ. Untied needs ``lm_head.weight``.

At load time the per-layer tensors are transposed to ``[in, out]``, the q/k/v projections are fused
into one matrix and gate/up into another (two matmuls fewer per layer), and the layers are stacked
on a leading axis so the forward is one ``lax.scan``.

References: research/anchors-style-and-qwen3.md B.2, B.3.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy before safetensors reads it)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..errors import InputError
from .config import Qwen3Config, config_to_dict, read_config
from .tokenizer import load_tokenizer

__all__ = [
    "LayerStack", "Qwen3Weights", "expected_shapes", "load_weights", "weights_from_tensors",
    "read_tensors", "random_tensors", "save_checkpoint", "load_model", "DTYPES",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerStack:
  """Every decoder layer's weights, stacked on a leading layer axis L, laid out ``[in, out]``.

  Attributes:
    attn_norm: [L, H] input RMSNorm weight.
    qkv: [L, H, (Nq + 2 Nkv) D] fused q/k/v projections (q first, then k, then v).
    q_norm: [L, D] per-head RMSNorm weight of queries.
    k_norm: [L, D] per-head RMSNorm weight of keys.
    o: [L, Nq D, H] output projection.
    mlp_norm: [L, H] post-attention RMSNorm weight.
    gate_up: [L, H, 2 I] fused gate and up projections (gate first).
    down: [L, I, H] down projection.
  """

  attn_norm: jax.Array
  qkv: jax.Array
  q_norm: jax.Array
  k_norm: jax.Array
  o: jax.Array
  mlp_norm: jax.Array
  gate_up: jax.Array
  down: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Qwen3Weights:
  """A Qwen3 model: weights (pytree leaves) and its config (static).

  Attributes:
    embed: [V, H] token embeddings.
    layers: the stacked decoder layers.
    final_norm: [H] RMSNorm before the head.
    lm_head: [V, H] output projection (the same array as ``embed`` when tied).
    config: the architecture (static: part of the jit cache key).
  """

  embed: jax.Array
  layers: LayerStack
  final_norm: jax.Array
  lm_head: jax.Array
  config: Qwen3Config = dataclasses.field(metadata=dict(static=True))

  @property
  def dtype(self):
    return self.embed.dtype


def expected_shapes(cfg: Qwen3Config, with_lm_head: bool) -> dict[str, tuple[int, ...]]:
  """Tensor name -> shape ``[out, in]`` as transformers stores them (B.2)."""
  h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  out = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
  for n in range(cfg.num_layers):
    p = f"model.layers.{n}."
    out.update({
        p + "input_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (cfg.num_heads * d, h),
        p + "self_attn.k_proj.weight": (cfg.num_kv_heads * d, h),
        p + "self_attn.v_proj.weight": (cfg.num_kv_heads * d, h),
        p + "self_attn.o_proj.weight": (h, cfg.num_heads * d),
        p + "self_attn.q_norm.weight": (d,),
        p + "self_attn.k_norm.weight": (d,),
        p + "post_attention_layernorm.weight": (h,),
        p + "mlp.gate_proj.weight": (i, h),
        p + "mlp.up_proj.weight": (i, h),
        p + "mlp.down_proj.weight": (h, i),
    })
  if with_lm_head:
    out["lm_head.weight"] = (cfg.vocab_size, h)
  return out


def _list(names) -> str:
  names = sorted(names)
  shown = ", ".join(names[:3])
  return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _check_names_and_shapes(cfg: Qwen3Config, shapes: dict[str, tuple[int, ...]]) -> None:
  has_head = "lm_head.weight" in shapes
  expected = expected_shapes(cfg, with_lm_head=has_head or not cfg.tie_word_embeddings)
  missing = set(expected) - set(shapes)
  unexpected = set(shapes) - set(expected)
  parts = []
  if missing:
    parts.append(f"missing {len(missing)} tensor(s): {_list(missing)}")
  if unexpected:
    parts.append(f"unexpected {len(unexpected)} tensor(s): {_list(unexpected)}")
  if parts:
    raise InputError("checkpoint: " + "; ".join(parts))
  for name, shape in expected.items():
    if tuple(shapes[name]) != shape:
      raise InputError(f"checkpoint: {name} has shape {list(shapes[name])}, expected "
                       f"{list(shape)} from config.json")


def weights_from_tensors(cfg: Qwen3Config, tensors: dict[str, np.ndarray],
                         dtype: str = "float32") -> Qwen3Weights:
  """Checks HF-named tensors against ``cfg`` and builds :class:`Qwen3Weights`.

  Args:
    cfg: the architecture.
    tensors: name -> numpy array in transformers' ``[out, in]`` layout.
    dtype: "float32" (weights upcast: the exact path) or "bfloat16" (as stored).

  Returns:
    The weights as JAX arrays of ``dtype`` on the default device.

  Raises:
    InputError: missing/unexpected tensors or a wrong shape (a tied head that differs from the
    embedding only warns).
  """
  if dtype not in DTYPES:
    raise InputError(f"dtype is {dtype!r}, expected one of {', '.join(DTYPES)}")
  _check_names_and_shapes(cfg, {k: tuple(v.shape) for k, v in tensors.items()})
  np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16

  def get(name):
    return np.asarray(tensors[name]).astype(np_dtype)

  def stacked(fn):
    return jnp.asarray(np.stack([fn(f"model.layers.{n}.") for n in range(cfg.num_layers)]))

  layers = LayerStack(
      attn_norm=stacked(lambda p: get(p + "input_layernorm.weight")),
      qkv=stacked(lambda p: np.concatenate(
          [get(p + f"self_attn.{x}_proj.weight").T for x in "qkv"], axis=1)),
      q_norm=stacked(lambda p: get(p + "self_attn.q_norm.weight")),
      k_norm=stacked(lambda p: get(p + "self_attn.k_norm.weight")),
      o=stacked(lambda p: get(p + "self_attn.o_proj.weight").T),
      mlp_norm=stacked(lambda p: get(p + "post_attention_layernorm.weight")),
      gate_up=stacked(lambda p: np.concatenate(
          [get(p + "mlp.gate_proj.weight").T, get(p + "mlp.up_proj.weight").T], axis=1)),
      down=stacked(lambda p: get(p + "mlp.down_proj.weight").T),
  )
  embed_np = get("model.embed_tokens.weight")
  embed = jnp.asarray(embed_np)
  if cfg.tie_word_embeddings:
    if "lm_head.weight" in tensors and not np.array_equal(
        np.asarray(tensors["lm_head.weight"]), np.asarray(tensors["model.embed_tokens.weight"])):
      warnings.warn("checkpoint: lm_head.weight differs from model.embed_tokens.weight but "
                    "config.json has tie_word_embeddings true; using model.embed_tokens.weight "
                    "as transformers does", UserWarning, stacklevel=2)
    lm_head = embed
  else:
    lm_head = jnp.asarray(get("lm_head.weight"))
  return Qwen3Weights(embed=embed, layers=layers, final_norm=jnp.asarray(get("model.norm.weight")),
                      lm_head=lm_head, config=cfg)


def _safetensors_files(model_dir: Path) -> list[Path]:
  files = sorted(model_dir.glob("*.safetensors"))
  if not files:
    raise InputError(f"{model_dir}: no *.safetensors file (expected model.safetensors)")
  return files


def read_tensors(model_dir: str | Path) -> dict[str, np.ndarray]:
  """Every tensor of every ``*.safetensors`` file in ``model_dir``, as numpy arrays (no torch)."""
  out: dict[str, np.ndarray] = {}
  for path in _safetensors_files(Path(model_dir)):
    try:
      with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
          if name in out:
            raise InputError(f"checkpoint: {name} appears in more than one file")
          out[name] = f.get_tensor(name)
    except (SafetensorError, OSError) as e:
      raise InputError(f"{path}: cannot read safetensors ({str(e).splitlines()[0]})") from None
    except TypeError as e:
      raise InputError(f"{path}: unsupported tensor dtype ({e})") from None
  return out


def load_weights(model_dir: str | Path, dtype: str = "float32") -> Qwen3Weights:
  """Reads ``config.json`` and the safetensors of a Qwen3 model directory.

  Args:
    model_dir: a folder with config.json and model.safetensors (or several shards).
    dtype: "float32" (exact path, weights upcast) or "bfloat16".

  Returns:
    :class:`Qwen3Weights`.

  Raises:
    InputError: every problem, as one line (missing files, unsupported config, tensor names or
    shapes that do not match the config).
  """
  cfg = read_config(model_dir)
  return weights_from_tensors(cfg, read_tensors(model_dir), dtype)


def random_tensors(cfg: Qwen3Config, seed: int = 0, scale: float = 0.5,
                   with_lm_head: bool | None = None) -> dict[str, np.ndarray]:
  """Deterministic random float32 tensors with transformers' names (norm weights not all ones).

  Linear weights are N(0, scale^2 / fan_in) so activations stay O(1); embeddings N(0, 1);
  norm weights uniform in [0.5, 1.5].
  """
  rng = np.random.default_rng(seed)
  if with_lm_head is None:
    with_lm_head = not cfg.tie_word_embeddings
  out = {}
  for name, shape in expected_shapes(cfg, with_lm_head).items():
    if len(shape) == 1:
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name in ("model.embed_tokens.weight", "lm_head.weight"):
      out[name] = rng.standard_normal(shape).astype(np.float32)
    else:
      out[name] = (rng.standard_normal(shape) * scale / np.sqrt(shape[1])).astype(np.float32)
  if cfg.tie_word_embeddings and with_lm_head:
    out["lm_head.weight"] = out["model.embed_tokens.weight"].copy()
  return out


def save_checkpoint(model_dir: str | Path, cfg: Qwen3Config, tensors: dict[str, np.ndarray],
                    dtype: str = "float32") -> Path:
  """Writes config.json and model.safetensors (``safetensors.numpy``, no torch)."""
  d = Path(model_dir)
  d.mkdir(parents=True, exist_ok=True)
  np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
  cfg_obj = config_to_dict(cfg)
  cfg_obj["torch_dtype"] = dtype
  (d / "config.json").write_text(json.dumps(cfg_obj, indent=2) + "\n", encoding="utf-8")
  save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()},
            str(d / "model.safetensors"), metadata={"format": "pt"})
  return d


def load_model(model_dir: str | Path, dtype: str = "float32"):
  """(weights, tokenizer) of a model directory, checking the cheapest things first.

  config.json is read first, then tokenizer.json, then the weights; a tokenizer with more tokens
  than the model has embedding rows is refused.

  Raises:
    InputError: one line naming the file and the rule.
  """
  read_config(model_dir)
  tok = load_tokenizer(model_dir)
  weights = load_weights(model_dir, dtype)
  n = tok.get_vocab_size(with_added_tokens=True)
  if n > weights.config.vocab_size:
    raise InputError(f"{model_dir}: tokenizer has {n} tokens but the model only "
                     f"{weights.config.vocab_size} embedding rows")
  return weights, tok
