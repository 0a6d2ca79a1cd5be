"""The demonstration and hint/prefix recipes on trees, by name.

LUFFY, SRFT, HPT and ReLIFT carry the atomic recipes' names (at depth 1 they are the atomic
fields); UFT, Prefix-RFT and BREAD need the token level (hints and prefixes of a demonstration).
"""

from __future__ import annotations

from .base import TreeRecipe
from .bread import TREE_BREAD
from .hpt import TREE_HPT
from .luffy import TREE_LUFFY
from .prefix_rft import TREE_PREFIX_RFT
from .relift import TREE_RELIFT
from .srft import TREE_SRFT
from .uft import TREE_UFT

__all__ = ["DEMO_TREE_RECIPES"]

DEMO_TREE_RECIPES: dict[str, TreeRecipe] = {r.name: r for r in (
    TREE_LUFFY, TREE_SRFT, TREE_HPT, TREE_RELIFT, TREE_UFT, TREE_PREFIX_RFT, TREE_BREAD)}
