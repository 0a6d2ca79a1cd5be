r"""The Qwen3 forward pass as plain JAX functions over :class:`Qwen3Weights`.

Exactly transformers' ``modeling_qwen3.py`` (v4.51 and v5), in the weights' dtype:

- pre-norm decoder layer: ``h = x + Attn(RMSNorm_in(x))``, ``out = h + MLP(RMSNorm_post(h))``;
- RMSNorm: upcast to float32, ``x * rsqrt(mean(x^2) + eps)``, cast back to the input dtype,
  *then* multiply by the weight (no ``1 + w``);
- attention: q/k projected, RMSNorm'ed per head over ``head_dim`` (one shared [D] weight),
  then split-half RoPE (cos/sin computed in float32, cast to the activation dtype), GQA (query head
  h uses key/value head h // group), scores ``q k^T * D^-1/2``, causal mask, softmax in float32 cast
  back, ``@ v``, output projection; no biases;
- MLP: ``down(silu(gate(x)) * up(x))``; final RMSNorm; head ``x @ E^T`` (logits in the weights'
  dtype, as transformers returns them); log-softmax always in float32 here.

Sequences are right-padded: real tokens sit at positions ``0..n-1`` and, attention being causal,
padding after them never changes them, so no padding mask is needed.

float32 matmuls use ``Precision.HIGHEST`` (no TF32 on GPUs); bfloat16 uses the default.

References: transformers ``models/qwen3/modeling_qwen3.py``; research/anchors-style-and-qwen3.md
B.4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .checkpoint import LayerStack, Qwen3Weights
from .config import Qwen3Config

__all__ = [
    "rms_norm", "rope_cos_sin", "apply_rope", "attention", "mlp", "decoder_layer",
    "final_hidden", "logits_from_hidden", "forward", "token_log_probs", "gather_positions",
]


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _last_axis(w: jax.Array, ndim: int) -> jax.Array:
  """[N] -> [1, ..., 1, N] with ``ndim`` axes (explicit broadcasting)."""
  return w.reshape((1,) * (ndim - 1) + w.shape)


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., In] @ w [In, Out] in x's dtype."""
  return jnp.einsum("...i,io->...o", x, w, precision=_precision(x.dtype))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  r"""Qwen3RMSNorm: w · cast(x / sqrt(mean(x²) + eps)), the mean taken in float32.

  Args:
    x: [..., N] activations.
    weight: [N] scale.
    eps: epsilon.

  Returns:
    [..., N] in x's dtype.
  """
  x32 = x.astype(jnp.float32)
  var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  y = (x32 * jax.lax.rsqrt(var + jnp.float32(eps))).astype(x.dtype)
  return _last_axis(weight, y.ndim) * y


def rope_cos_sin(length: int, head_dim: int, theta: float, dtype) -> tuple[jax.Array, jax.Array]:
  r"""cos and sin of the default RoPE for positions 0..length-1.

  inv_freq_j = 1 / θ^{2j/D}; angle(t, j) = t · inv_freq_j; the table is [angle, angle] (split
  half), computed in float32 and then cast to ``dtype``.

  Returns:
    (cos, sin), each [length, D].
  """
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / jnp.float32(head_dim)
  inv_freq = 1.0 / (jnp.float32(theta) ** exponents)
  pos = jnp.arange(length, dtype=jnp.float32)
  freqs = pos[:, None] * inv_freq[None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  r"""x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] (split halves).

  Args:
    x: [B, T, N, D].
    cos, sin: [T, D].
  """
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  return x * c + rotated * s


def attention(cfg: Qwen3Config, layer: LayerStack, x: jax.Array, cos: jax.Array,
              sin: jax.Array) -> jax.Array:
  """Causal GQA self-attention of one layer on normed input x [B, T, H] -> [B, T, H]."""
  b, t, _ = x.shape
  nq, nkv, d, g = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.group_size
  qkv = _matmul(x, layer.qkv)
  q = qkv[..., : nq * d].reshape(b, t, nq, d)
  k = qkv[..., nq * d: (nq + nkv) * d].reshape(b, t, nkv, d)
  v = qkv[..., (nq + nkv) * d:].reshape(b, t, nkv, d)
  q = apply_rope(rms_norm(q, layer.q_norm, cfg.rms_norm_eps), cos, sin)
  k = apply_rope(rms_norm(k, layer.k_norm, cfg.rms_norm_eps), cos, sin)
  q = q.reshape(b, t, nkv, g, d)  # query head h = kv * g + j uses key/value head kv
  prec = _precision(x.dtype)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, precision=prec) * jnp.asarray(d ** -0.5, x.dtype)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None, None, :, :]
  scores = jnp.where(causal, scores.astype(jnp.float32), -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v, precision=prec)
  return _matmul(out.reshape(b, t, nq * d), layer.o)


def mlp(cfg: Qwen3Config, layer: LayerStack, x: jax.Array) -> jax.Array:
  """SwiGLU: down(silu(gate x) * (up x)), x [B, T, H] -> [B, T, H]."""
  gate_up = _matmul(x, layer.gate_up)
  i = cfg.intermediate_size
  return _matmul(jax.nn.silu(gate_up[..., :i]) * gate_up[..., i:], layer.down)


def decoder_layer(cfg: Qwen3Config, layer: LayerStack, x: jax.Array, cos: jax.Array,
                  sin: jax.Array) -> jax.Array:
  """One pre-norm decoder layer (``layer`` holds a single layer's arrays, no L axis)."""
  h = x + attention(cfg, layer, rms_norm(x, layer.attn_norm, cfg.rms_norm_eps), cos, sin)
  return h + mlp(cfg, layer, rms_norm(h, layer.mlp_norm, cfg.rms_norm_eps))


def final_hidden(weights: Qwen3Weights, tokens: jax.Array) -> jax.Array:
  """The final-normed hidden states (the LM head's input).

  Args:
    weights: the model.
    tokens: [B, T] int token ids, right-padded.

  Returns:
    [B, T, H] in the weights' dtype.
  """
  cfg = weights.config
  x = jnp.take(weights.embed, tokens, axis=0)
  cos, sin = rope_cos_sin(tokens.shape[1], cfg.head_dim, cfg.rope_theta, x.dtype)

  def body(carry, layer):
    return decoder_layer(cfg, layer, carry, cos, sin), None

  x, _ = jax.lax.scan(body, x, weights.layers)
  return rms_norm(x, weights.final_norm, cfg.rms_norm_eps)


def logits_from_hidden(weights: Qwen3Weights, hidden: jax.Array) -> jax.Array:
  """hidden [..., H] @ lm_head^T -> [..., V] in the weights' dtype (as transformers)."""
  return jnp.einsum("...h,vh->...v", hidden, weights.lm_head,
                    precision=_precision(hidden.dtype))


def forward(weights: Qwen3Weights, tokens: jax.Array) -> jax.Array:
  """Logits [B, T, V] (what ``Qwen3ForCausalLM(tokens).logits`` returns)."""
  return logits_from_hidden(weights, final_hidden(weights, tokens))


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """hidden [B, T, H] at positions [B, K] -> [B, K, H]."""
  return jnp.take_along_axis(hidden, positions[:, :, None], axis=1)


def token_log_probs(weights: Qwen3Weights, hidden: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target | position) in float32 at a few gathered positions.

  Args:
    weights: the model.
    hidden: [B, K, H] final hidden states at the positions that predict ``targets``.
    targets: [B, K] token ids.

  Returns:
    [B, K] float32 log-probabilities (log-softmax over the whole vocabulary in float32).
  """
  logits = logits_from_hidden(weights, hidden).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[:, :, None], axis=-1)[..., 0]
  return picked - log_z
