"""The `>>>` examples in every docstring of the installed package run and print what they say, and
every public function of theory/ has one."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest


def _modules() -> list[str]:
  names = []
  for sub in ("theory", "verify", "figures"):
    package = importlib.import_module(f"nondecoupling.{sub}")
    names.append(package.__name__)
    names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
              if not m.name.endswith("__main__")]
  return sorted(names)


MODULES = _modules()
THEORY = [m for m in MODULES if m.startswith("nondecoupling.theory")
          and not any(part.startswith("_") for part in m.split("."))]


def public_functions(name: str) -> list[str]:
  """The public functions a theory module defines: those in its ``__all__``; in theory/tree/ and
  theory/recipes/ (whose modules may have no ``__all__``) every module-level function whose name
  does not start with ``_``. Re-exported names are checked where they are defined."""
  module = importlib.import_module(name)
  if hasattr(module, "__all__"):
    names = list(module.__all__)
  elif ".tree" in name or ".recipes" in name:
    names = [n for n in vars(module) if not n.startswith("_")]
  else:
    names = []
  return [n for n in names if inspect.isfunction(obj := getattr(module, n, None))
          and obj.__module__ == name]


def has_example(function) -> bool:
  """A `>>>` example under a Google-style ``Examples:`` section (rendered as code by the docs)."""
  doc = inspect.getdoc(function) or ""
  head, found, body = doc.partition("\nExamples:\n")
  return bool(found) and ">>> " in body


def test_every_package_is_walked():
  assert {"nondecoupling.theory.objectives", "nondecoupling.verify.registry",
          "nondecoupling.figures.theorems", "nondecoupling.theory.recipes.grpo",
          "nondecoupling.theory.tree.policy", "nondecoupling.theory.tree.recipes.registry",
          "nondecoupling.verify.tree_io"} <= set(MODULES)


def test_the_example_check_can_fail():
  def documented():
    """f.

    Examples:
      >>> 1
      1
    """

  def bare():
    """f.

    >>> 1
    1
    """

  assert has_example(documented) and not has_example(bare) and not has_example(len)
  assert "sft_loss" in public_functions("nondecoupling.theory.objectives")
  assert "safe_log" not in public_functions("nondecoupling.theory.objectives")  # re-exported
  assert "get_tree_recipe" in public_functions("nondecoupling.theory.tree.recipes.registry")


@pytest.mark.parametrize("name", THEORY)
def test_every_public_theory_function_has_an_example(name):
  missing = [f for f in public_functions(name)
             if not has_example(getattr(importlib.import_module(name), f))]
  assert not missing, f"{name}: no `>>>` example under Examples: in {missing}"


@pytest.mark.parametrize("name", ["nondecoupling"] + MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in finder.find(module, name):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
