"""Every recipe on trees, by name.

Each family module exports a dict of :class:`~.base.TreeRecipe`; this module merges them.
"""

from __future__ import annotations

from .base import TreeRecipe

__all__ = ["TREE_RECIPES", "get_tree_recipe"]

TREE_RECIPES: dict[str, TreeRecipe] = {}


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
