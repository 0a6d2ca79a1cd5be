"""The group-RL recipes on trees (GRPO, Dr.GRPO, DAPO, PPO-clip), by name.

:data:`RL_TREE_RECIPES` maps each name to its :class:`~.base.TreeRecipe`; :mod:`.registry` merges
it into ``TREE_RECIPES``. The names are the atomic recipes' (``theory.recipes``) where one exists.

>>> sorted(RL_TREE_RECIPES)
['dapo', 'dr_grpo', 'grpo', 'ppo_clip']
"""

from __future__ import annotations

from .base import TreeRecipe
from .group_rl import DAPO, DR_GRPO, GRPO, PPO_CLIP

__all__ = ["RL_TREE_RECIPES"]

RL_TREE_RECIPES: dict[str, TreeRecipe] = {r.name: r for r in (GRPO, DR_GRPO, DAPO, PPO_CLIP)}
