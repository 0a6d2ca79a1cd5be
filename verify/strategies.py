"""Hypothesis strategies of small instances (raw dicts of numpy arrays) and probe policies.

A raw instance is what an instance file holds: {"prompt_weights", "data", "reference", "reward",
"beta"}; :func:`pad_raw` pads one in numpy to a fixed shape so that a statement compiles once.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .families import normalise

__all__ = ["SEARCH_SHAPE", "instance_strategy", "probe_strategy_for", "is_valid_raw", "pad_raw"]

SEARCH_SHAPE = (3, 4)  # [X, Y] every searched instance is padded to



def instance_strategy(max_prompts: int = 3, max_responses: int = 4, reward_values=None,
                      allow_sparse: bool = True, beta_range=(1e-2, 1e2)):
  """Hypothesis strategy of valid (unpadded) instances as plain dicts of numpy arrays.

  Args:
    max_prompts, max_responses: size limits (pad to a bucket before evaluating).
    reward_values: a strategy of one reward value (default: floats in [-2, 2]).
    allow_sparse: whether data may have zeros.
    beta_range: (low, high) for β.

  Returns:
    A strategy of dicts {"prompt_weights", "data", "reference", "reward", "beta"}.
  """
  mass = st.floats(0.05, 1.0, allow_nan=False, allow_infinity=False, width=64)
  if reward_values is None:
    reward_values = st.floats(-2.0, 2.0, allow_nan=False, width=64)

  @st.composite
  def build(draw):
    nx = draw(st.integers(1, max_prompts))
    ny = draw(st.integers(2, max_responses))
    w = np.array(draw(st.lists(mass, min_size=nx, max_size=nx)))
    d = np.array(draw(st.lists(st.lists(mass, min_size=ny, max_size=ny), min_size=nx,
                               max_size=nx)))
    if allow_sparse:
      keep = np.array(draw(st.lists(st.lists(st.booleans(), min_size=ny, max_size=ny),
                                    min_size=nx, max_size=nx)))
      keep[np.arange(nx), np.argmax(d, axis=1)] = True
      d = d * keep
    same_ref = draw(st.booleans())
    ref = d if same_ref else np.array(draw(st.lists(st.lists(mass, min_size=ny, max_size=ny),
                                                    min_size=nx, max_size=nx)))
    r = np.array(draw(st.lists(st.lists(reward_values, min_size=ny, max_size=ny),
                               min_size=nx, max_size=nx)))
    beta = draw(st.floats(*beta_range, allow_nan=False, width=64))
    return {"prompt_weights": w / w.sum(), "data": normalise(d), "reference": normalise(ref),
            "reward": r, "beta": beta}

  return build()


def probe_strategy_for(raw: dict):
  """A strategy of probe logits [X, Y] for one raw instance (finite floats)."""
  nx, ny = np.asarray(raw["data"]).shape
  logit = st.floats(-4.0, 4.0, allow_nan=False, width=64)
  return st.lists(st.lists(logit, min_size=ny, max_size=ny), min_size=nx, max_size=nx).map(
      np.array)


def is_valid_raw(raw: dict) -> bool:
  """The instance rules (as theory.instance.validate), in numpy for speed."""
  d, ref, w = (np.asarray(raw[k], np.float64) for k in ("data", "reference", "prompt_weights"))
  return bool(np.all(np.isfinite(d)) and np.all(np.abs(d.sum(1) - 1) < 1e-9)
              and np.all(np.abs(ref.sum(1) - 1) < 1e-9) and abs(w.sum() - 1) < 1e-9
              and np.all(w > 0) and not np.any((d > 0) & (ref <= 0)) and raw["beta"] > 0)


def pad_raw(raw: dict, theta=None, shape=SEARCH_SHAPE) -> tuple:
  """Pads a raw instance in numpy, as theory.instance.pad_instance does (but without dispatch).

  Returns:
    (w, data, reference, reward, beta, mask, theta) numpy arrays of the padded shape.
  """
  d = np.asarray(raw["data"], np.float64)
  nx, ny = d.shape
  px, py = shape
  out_d, out_ref, out_r = np.zeros((px, py)), np.zeros((px, py)), np.zeros((px, py))
  out_d[:, :ny] = 1.0 / ny
  out_ref[:, :ny] = 1.0 / ny
  out_d[:nx, :ny] = d
  out_d[:nx, ny:] = 0.0
  ref = raw.get("reference")
  out_ref[:nx, :ny] = d if ref is None else np.asarray(ref, np.float64)
  out_r[:nx, :ny] = np.asarray(raw["reward"], np.float64)
  w = np.zeros(px)
  w[:nx] = np.asarray(raw["prompt_weights"], np.float64)
  mask = np.zeros((px, py), bool)
  mask[:, :ny] = True
  th = np.zeros((px, py))
  if theta is not None:
    th[:nx, :ny] = np.asarray(theta, np.float64)
  return w, out_d, out_ref, out_r, np.float64(raw["beta"]), mask, th
