"""Qwen3 ``config.json``: parsed into a frozen dataclass, unsupported settings refused.

Accepts both the 4.51-era form (top-level ``rope_theta``, ``rope_scaling: null``) and the form
transformers v5 writes (``rope_parameters: {"rope_theta": ..., "rope_type": "default"}``).
Refused, each with a one-line :class:`verify.io.InputError`: another ``model_type``, sliding-window
attention, attention biases, an activation other than SiLU, RoPE scaling of any kind, layer types
other than full attention, query heads not a multiple of key/value heads.

References:
  transformers ``models/qwen3/configuration_qwen3.py`` (v4.51 and v5);
  research/anchors-style-and-qwen3.md B.1, B.5.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["Qwen3Config", "config_from_dict", "config_to_dict", "read_config"]

DEFAULT_HEAD_DIM = 128  # transformers' Qwen3Config default (v4.51 and v5), whatever hidden_size is
DEFAULT_ROPE_THETA = 10000.0


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
  """The architecture numbers the forward pass needs (all static).

  Attributes:
    vocab_size: embedding rows V (may exceed the tokenizer's highest id + 1).
    hidden_size: residual width H.
    intermediate_size: SwiGLU width I.
    num_layers: decoder layers L.
    num_heads: query heads.
    num_kv_heads: key/value heads (num_heads is a multiple of it: GQA).
    head_dim: per-head width D (read from the file; D * num_heads may differ from H).
    rms_norm_eps: epsilon of every RMSNorm.
    rope_theta: RoPE base.
    tie_word_embeddings: the LM head is the embedding matrix.
    max_position_embeddings: longest sequence the model was trained for.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = DEFAULT_ROPE_THETA
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 40960

  @property
  def group_size(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads


def _int(obj: dict, key: str, default: Any = None) -> int:
  value = obj.get(key, default)
  if value is None:
    raise InputError(f"config.json: {key} is missing")
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise InputError(f"config.json: {key} is {value!r}, expected a positive integer")
  return int(value)


def _float(obj: dict, key: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
    raise InputError(f"config.json: {key} is {value!r}, expected a positive number")
  return float(value)


def _rope_theta(obj: dict) -> float:
  params = obj.get("rope_parameters")
  scaling = obj.get("rope_scaling")
  if params is not None:
    if not isinstance(params, dict):
      raise InputError("config.json: rope_parameters must be an object")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
      raise InputError(f"config.json: rope_parameters.rope_type {rope_type!r} is not supported "
                       "(only 'default' RoPE)")
    theta = params.get("rope_theta", obj.get("rope_theta", DEFAULT_ROPE_THETA))
    return _float(obj, "rope_parameters.rope_theta", theta)
  if scaling is not None:
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
    if kind not in (None, "default"):
      raise InputError(f"config.json: rope_scaling {kind!r} is not supported (only default RoPE)")
  return _float(obj, "rope_theta", obj.get("rope_theta", DEFAULT_ROPE_THETA))


def config_from_dict(obj: Any) -> Qwen3Config:
  """Validates a parsed ``config.json`` and returns a :class:`Qwen3Config`.

  Raises:
    InputError: one line naming the key and the rule (unsupported settings included).
  """
  if not isinstance(obj, dict):
    raise InputError("config.json: expected a JSON object")
  model_type = obj.get("model_type")
  if model_type != "qwen3":
    raise InputError(f"config.json: model_type is {model_type!r}, expected 'qwen3'")
  if obj.get("use_sliding_window"):
    raise InputError("config.json: use_sliding_window is true; sliding-window attention is not "
                     "supported")
  if obj.get("attention_bias"):
    raise InputError("config.json: attention_bias is true; attention biases are not supported")
  act = obj.get("hidden_act", "silu")
  if act != "silu":
    raise InputError(f"config.json: hidden_act is {act!r}, only 'silu' is supported")
  layer_types = obj.get("layer_types")
  if layer_types is not None:
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
      raise InputError(f"config.json: layer_types contains {other[0]!r}; only 'full_attention' "
                       "is supported")
  cfg = Qwen3Config(
      vocab_size=_int(obj, "vocab_size"),
      hidden_size=_int(obj, "hidden_size"),
      intermediate_size=_int(obj, "intermediate_size"),
      num_layers=_int(obj, "num_hidden_layers"),
      num_heads=_int(obj, "num_attention_heads"),
      num_kv_heads=_int(obj, "num_key_value_heads", obj.get("num_attention_heads")),
      head_dim=_int(obj, "head_dim", DEFAULT_HEAD_DIM),
      rms_norm_eps=_float(obj, "rms_norm_eps", obj.get("rms_norm_eps", 1e-6)),
      rope_theta=_rope_theta(obj),
      tie_word_embeddings=bool(obj.get("tie_word_embeddings", False)),
      max_position_embeddings=_int(obj, "max_position_embeddings", 40960),
  )
  if cfg.num_heads % cfg.num_kv_heads:
    raise InputError(f"config.json: num_attention_heads {cfg.num_heads} is not a multiple of "
                     f"num_key_value_heads {cfg.num_kv_heads}")
  if cfg.head_dim % 2:
    raise InputError(f"config.json: head_dim {cfg.head_dim} is odd, RoPE needs an even head_dim")
  return cfg


def config_to_dict(cfg: Qwen3Config) -> dict:
  """The ``config.json`` object of ``cfg`` (the v5 form, ``rope_parameters``)."""
  return {
      "architectures": ["Qwen3ForCausalLM"],
      "model_type": "qwen3",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "max_position_embeddings": cfg.max_position_embeddings,
      "attention_bias": False,
      "attention_dropout": 0.0,
      "use_sliding_window": False,
      "torch_dtype": "float32",
  }


def read_config(model_dir: str | Path) -> Qwen3Config:
  """Reads ``model_dir/config.json``.

  Raises:
    InputError: missing file, broken JSON, or an unsupported/invalid setting.
  """
  path = Path(model_dir) / "config.json"
  if not Path(model_dir).is_dir():
    raise InputError(f"{model_dir}: no such model directory")
  if not path.is_file():
    raise InputError(f"{path}: no such file (a Qwen3 model directory has config.json)")
  try:
    obj = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  return config_from_dict(obj)
