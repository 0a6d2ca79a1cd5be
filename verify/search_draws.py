"""The examples a Hypothesis search draws while nothing fails, drawn once and kept on disk.

A search in ``verify`` (:mod:`.search`) asks Hypothesis' ``find`` for an example on which a
statement fails. Its predicate gives Hypothesis no feedback other than "not found", so until
something fails the examples drawn depend only on the strategy, the settings and the seed, not on
what the predicate computes. :func:`drawn_examples` draws them with a predicate that records each
example and answers "not found": the very examples the search would evaluate, in order, up to the
first that fails. The caller evaluates them all at once (one batched program instead of one
dispatch per example and statement) and runs the real search only when one of them fails.

Drawing is Hypothesis' own Python work (about 7 ms per instance of at most 3 × 4 entries, most of
a warm ``verify``'s search time), so the drawn examples are kept in the folder of stored programs
(:func:`~.stored_programs.program_dir`) under a key holding the kind of example, the example
budget, the seed, Hypothesis' version and what :func:`~.stored_programs.program_key` holds (JAX's
and the package's versions, a hash of every ``.py`` file of ``theory/`` and ``verify/``, the
strategies' code included). The examples are then evaluated anew in every run; only the drawing
is reused. Without a folder (``--no-cache``) they are drawn every time.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from random import Random

import hypothesis
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import NoSuchExample

from .compile_cache import default_cache_dir
from .stored_programs import keep_file, program_dir, program_key

__all__ = ["search_settings", "drawn_examples"]

_FORMAT = 1  # bump when the file layout changes


def _keep_hypothesis_files_in_the_cache() -> None:
  """Hypothesis keeps files (e.g. constants read from source) under ``./.hypothesis`` by default:
  a command must not write into the user's working directory, so they go to the cache directory
  (unless ``HYPOTHESIS_STORAGE_DIRECTORY`` says otherwise)."""
  if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(default_cache_dir() / "hypothesis")


def search_settings(max_examples: int) -> settings:
  """The settings of every search: deterministic given ``random``, no database, no deadline."""
  _keep_hypothesis_files_in_the_cache()
  return settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])


def _draw(strategy, max_examples: int, seed: int) -> list:
  seen: list = []

  def record(example) -> bool:
    seen.append(example)
    return False

  try:
    find(strategy, record, settings=search_settings(max_examples), random=Random(seed))
  except NoSuchExample:
    pass
  return seen


def _path(kind: str, max_examples: int, seed: int) -> Path | None:
  folder = program_dir()
  if folder is None:
    return None
  name = f"search draws v{_FORMAT} [{kind}, {max_examples}, {seed}, {hypothesis.__version__}]"
  return folder / f"{program_key(name, ())}.draws"


def _read(path: Path) -> list | None:
  try:
    examples = pickle.loads(path.read_bytes())
  except Exception:  # noqa: BLE001 - an unreadable or stale file is drawn again
    return None
  return examples if isinstance(examples, list) else None


def drawn_examples(kind: str, strategy, max_examples: int, seed: int) -> list:
  """The examples ``find(strategy, predicate, search_settings(max_examples), Random(seed))``
  evaluates, in order, while its predicate finds nothing.

  Args:
    kind: names ``strategy`` in the key of the stored examples (one name, one strategy).
    strategy: a Hypothesis strategy.
    max_examples: the search's example budget.
    seed: the search's seed.

  Returns:
    A list of drawn values (read from disk when this kind, budget and seed were drawn before by
    the same code and versions).
  """
  path = _path(kind, max_examples, seed)
  if path is not None and path.exists():
    stored = _read(path)
    if stored is not None:
      return stored
  examples = _draw(strategy, max_examples, seed)
  if path is not None:
    keep_file(path, pickle.dumps(examples))
  return examples
