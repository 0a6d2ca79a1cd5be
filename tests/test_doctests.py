"""The `>>>` examples in every docstring of the installed package run and print what they say."""

from __future__ import annotations

import doctest
import importlib
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


def test_every_package_is_walked():
  assert {"nondecoupling.theory.objectives", "nondecoupling.verify.registry",
          "nondecoupling.figures.theorems", "nondecoupling.theory.recipes.grpo"} <= set(MODULES)


@pytest.mark.parametrize("name", ["nondecoupling"] + MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in finder.find(module, name):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
