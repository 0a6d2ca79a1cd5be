r"""SFT/RL fusion recipes as exact logit-gradient fields plus Monte-Carlo estimators (THEORY.md F).

Every recipe is written in the unified form of UPGE (Lv et al., arXiv 2509.04419):

.. math:: g_x = w_x\, \mathbb{E}_{y\sim q}\Big[\mathbb{1}_{\text{stable}}(y)\,
          \frac{1}{\pi_{\text{ref}}(y)}\,\hat A(y)\,\nabla_{\theta_x}\pi_\theta(y|x)\Big]

(stability mask × 1/reference denominator × advantage × ∇π), an *ascent* direction on the logits.
With ∇π(y) = π(y)(e_y − π) every on-policy group estimator reduces exactly to F_π b for a
per-response weight b(y) = E[Â 1_stable | y]; demonstrations y* ∼ d enter as
Σ_{y*} d(y*) c(y*) (e_{y*} − π).

Layout: :mod:`.base` (the :class:`Recipe` interface), :mod:`.sampling`, :mod:`.groups` (exact group
expectations), :mod:`.kl`, :mod:`.demonstrations`, one module per recipe, :mod:`.registry` and
:mod:`.train`. Defaults are the published ones (each config names its source).
"""

from .base import ConfigError, Recipe
from .groups import (
    MAX_GROUP_ENUMERATION,
    InfeasibleExactField,
    binomial_gate_probability,
    binomial_group_coefficient,
    binomial_off_advantage,
    compositions,
    reward_levels,
)
from .grpo import GroupPGConfig
from .hpt import HPTConfig
from .kl import kl_k3_loss_grad, kl_reverse_grad
from .kl_penalty import KLConfig
from .luffy import LUFFYConfig
from .ppo import PPOClipConfig
from .registry import (
    FUSION_RECIPES,
    RECIPES,
    get_recipe,
    recipe_estimate,
    recipe_field,
    recipe_sample,
    resolve_config,
)
from .reinforce import ReinforceConfig
from .relift import ReLIFTConfig
from .sampling import Draws, draw
from .sft import SFTConfig
from .srft import SRFTConfig
from .train import RecipeTrajectory, train_recipe, train_recipe_sampled

__all__ = [
    "ConfigError", "Recipe", "MAX_GROUP_ENUMERATION", "InfeasibleExactField",
    "binomial_gate_probability", "binomial_group_coefficient", "binomial_off_advantage",
    "compositions", "reward_levels", "GroupPGConfig", "HPTConfig", "kl_k3_loss_grad",
    "kl_reverse_grad", "KLConfig", "LUFFYConfig", "PPOClipConfig", "ReinforceConfig",
    "FUSION_RECIPES", "RECIPES", "get_recipe", "recipe_estimate", "recipe_field", "recipe_sample",
    "resolve_config", "ReLIFTConfig", "Draws", "draw", "SFTConfig", "SRFTConfig",
    "RecipeTrajectory", "train_recipe", "train_recipe_sampled",
]
