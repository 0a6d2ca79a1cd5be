r"""Recipe options: the rule each config field obeys, and setting a field from its text form.

Every recipe config is a frozen dataclass that checks its fields in ``__post_init__`` with the
rules here. A broken rule raises :class:`~.base.ConfigError` with one line naming the option and
the rule, e.g. ``GroupPGConfig.group_size is 0, expected a whole number >= 1``.
:func:`parse_option` reads a field's value from text (``4``, ``0.1``, ``true``, ``none``,
``k3_loss``), which is what ``compare --recipe-option NAME.FIELD=VALUE`` does; :func:`set_option`
sets it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from .base import ConfigError

__all__ = ["require_int", "require_positive", "require_finite", "require_non_negative",
           "require_bool", "require_choice", "parse_option", "set_option"]


def _fail(cfg: Any, name: str, rule: str) -> None:
  value = getattr(cfg, name)
  raise ConfigError(f"{type(cfg).__name__}.{name} is {value!r}, expected {rule}")


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def require_int(cfg: Any, name: str, low: int, high: int | None = None,
                optional: bool = False) -> None:
  """Field ``name`` is a whole number in [low, high] (None allowed when ``optional``).

  Examples:
    >>> from nondecoupling.theory.recipes import GroupPGConfig
    >>> require_int(GroupPGConfig(group_size=3), "group_size", 1)  # passes silently
  """
  v = getattr(cfg, name)
  if optional and v is None:
    return
  ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low and (
      high is None or v <= high)
  if not ok:
    span = f">= {low}" if high is None else f"in [{low}, {high}]"
    _fail(cfg, name, f"a whole number {span}" + (" or None" if optional else ""))


def require_positive(cfg: Any, name: str, optional: bool = False) -> None:
  """Field ``name`` is a finite number > 0 (None allowed when ``optional``).

  Examples:
    >>> from nondecoupling.theory.recipes import GroupPGConfig
    >>> GroupPGConfig(clip_low=0.0)
    Traceback (most recent call last):
    ...
    nondecoupling...ConfigError: GroupPGConfig.clip_low is 0.0, expected a finite number > 0
  """
  v = getattr(cfg, name)
  if optional and v is None:
    return
  if not (_is_real(v) and math.isfinite(v) and v > 0):
    _fail(cfg, name, "a finite number > 0" + (" or None" if optional else ""))


def require_finite(cfg: Any, name: str) -> None:
  """Field ``name`` is a finite number (a coefficient: any sign).

  Examples:
    >>> from nondecoupling.theory.recipes import SFTConfig
    >>> SFTConfig(coef=float("inf"))
    Traceback (most recent call last):
    ...
    nondecoupling...ConfigError: SFTConfig.coef is inf, expected a finite number
  """
  v = getattr(cfg, name)
  if not (_is_real(v) and math.isfinite(v)):
    _fail(cfg, name, "a finite number")


def require_non_negative(cfg: Any, name: str) -> None:
  """Field ``name`` is a finite number >= 0.

  Examples:
    >>> from nondecoupling.theory.recipes import ReLIFTConfig
    >>> ReLIFTConfig(sft_lr_ratio=-1.0)
    Traceback (most recent call last):
    ...
    nondecoupling...ConfigError: ReLIFTConfig.sft_lr_ratio is -1.0, expected a finite number >= 0
  """
  v = getattr(cfg, name)
  if not (_is_real(v) and math.isfinite(v) and v >= 0):
    _fail(cfg, name, "a finite number >= 0")


def require_bool(cfg: Any, name: str) -> None:
  """Field ``name`` is True or False.

  Examples:
    >>> from nondecoupling.theory.recipes import GroupPGConfig
    >>> GroupPGConfig(use_std=1)
    Traceback (most recent call last):
    ...
    nondecoupling...ConfigError: GroupPGConfig.use_std is 1, expected True or False
  """
  if not isinstance(getattr(cfg, name), bool):
    _fail(cfg, name, "True or False")


def require_choice(cfg: Any, name: str, choices: tuple) -> None:
  """Field ``name`` is one of ``choices``.

  Examples:
    >>> from nondecoupling.theory.recipes import GroupPGConfig
    >>> GroupPGConfig(kl_form="k4")
    Traceback (most recent call last):
    ...
    nondecoupling...ConfigError: GroupPGConfig.kl_form is 'k4', expected one of k3_loss, ...
  """
  if getattr(cfg, name) not in choices:
    _fail(cfg, name, "one of " + ", ".join(str(c) for c in choices))


def _parse(kinds: list[str], text: str, where: str):
  t = text.strip()
  if "None" in kinds and t.lower() == "none":
    return None
  if "bool" in kinds:
    if t.lower() in ("true", "false"):
      return t.lower() == "true"
  if "int" in kinds:
    try:
      return int(t)
    except ValueError:
      pass
  if "float" in kinds:
    try:
      return float(t)
    except ValueError:
      pass
  if "str" in kinds:
    return t
  words = {"None": "none", "bool": "true or false", "int": "a whole number",
           "float": "a number", "str": "a word"}
  raise ConfigError(f"{where} is {text!r}, expected " + " or ".join(words[k] for k in kinds))


def parse_option(cfg: Any, field: str, text: str) -> Any:
  """The value of ``cfg``'s field ``field`` written as ``text``, read by the field's declared type.

  ``none`` for an optional field, ``true``/``false`` for a flag, a whole number, a number, or a
  word. Raises ConfigError naming the field when it is unknown or the text does not parse (the
  field's rule is checked when a config is built with the value).

  Examples:
    >>> from nondecoupling.theory.recipes import LUFFYConfig
    >>> parse_option(LUFFYConfig(), "shaping_gamma", "none") is None
    True
  """
  fields = {f.name: f for f in dataclasses.fields(cfg)}
  name = type(cfg).__name__
  if field not in fields:
    raise ConfigError(f"{name} has no option {field!r} (options: {', '.join(fields)})")
  kinds = [k.strip() for k in str(fields[field].type).split("|")]
  return _parse(kinds, text, f"{name}.{field}")


def set_option(cfg: Any, field: str, text: str) -> Any:
  """A copy of ``cfg`` with ``field`` set from its text form (:func:`parse_option`); the config's
  rules then apply (ConfigError naming the field and the rule).

  Args:
    cfg: a recipe config (frozen dataclass).
    field: the field's name.
    text: its value as text.

  Returns:
    The new config.

  Examples:
    >>> from nondecoupling.theory.recipes import LUFFYConfig
    >>> set_option(LUFFYConfig(), "n_on", "3").n_on
    3
  """
  return dataclasses.replace(cfg, **{field: parse_option(cfg, field, text)})
