"""Every recipe on trees, by name.

Each family module exports a dict of :class:`~.base.TreeRecipe`; this module merges them.
"""

from __future__ import annotations

from .base import TreeRecipe
from .demo_family import DEMO_TREE_RECIPES
from .rl_family import RL_TREE_RECIPES

__all__ = ["TREE_RECIPES", "get_tree_recipe"]

TREE_RECIPES: dict[str, TreeRecipe] = {}
TREE_RECIPES.update(RL_TREE_RECIPES)
TREE_RECIPES.update(DEMO_TREE_RECIPES)


def get_tree_recipe(name: str) -> TreeRecipe:
  """The tree recipe called ``name``; KeyError (naming the known ones) otherwise.

  Examples:
    >>> try:
    ...   get_tree_recipe("no_such_recipe")
    ... except KeyError as e:
    ...   print("no tree recipe 'no_such_recipe'" in str(e))
    True
  """
  try:
    return TREE_RECIPES[name]
  except KeyError:
    raise KeyError(f"no tree recipe {name!r} (known: {', '.join(sorted(TREE_RECIPES))})") from None
