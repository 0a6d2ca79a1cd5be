r"""SFT/RL fusion recipes as exact logit-gradient fields plus Monte-Carlo estimators (THEORY.md F).

Every recipe is written in the unified form of UPGE (Lv et al., arXiv 2509.04419):

.. math:: g_x = w_x\, \mathbb{E}_{y\sim q}\Big[\mathbb{1}_{\text{stable}}(y)\,
          \frac{1}{\pi_{\text{ref}}(y)}\,\hat A(y)\,\nabla_{\theta_x}\pi_\theta(y|x)\Big]

(stability mask × 1/reference denominator × advantage × ∇π), an *ascent* direction on the logits.
With ∇π(y) = π(y)(e_y − π) every on-policy group estimator reduces exactly to F_π b for a
per-response weight b(y) = E[Â 1_stable | y]; demonstrations y* ∼ d enter as
Σ_{y*} d(y*) c(y*) (e_{y*} − π).

Layout: :mod:`.base` (the :class:`Recipe` interface), :mod:`.options` (the rules every config
field obeys, checked in ``__post_init__``: a broken rule raises :class:`ConfigError`),
:mod:`.sampling`, :mod:`.groups` (exact group expectations), :mod:`.binomial` (their binary-reward
closed forms), :mod:`.aggregation`, :mod:`.kl`, :mod:`.demonstrations`, :mod:`.buffer` (ReLIFT's
SFT buffer), one module per recipe, :mod:`.registry` and :mod:`.train`. Defaults are the
published ones (each config names its source; [UNCONFIRMED] marks what fusion-methods.md could not
verify).
"""

from .advantage import group_advantage
from .aggregation import RL_AGGREGATIONS
from .base import ConfigError, Recipe
from .binomial import (
    binomial_gate_probability,
    binomial_group_coefficient,
    binomial_off_advantage,
)
from .buffer import BUFFER_ORDERS, buffer_push, buffer_take
from .groups import (
    MAX_GROUP_ENUMERATION,
    InfeasibleExactField,
    compositions,
    reward_levels,
    sample_group_advantage,
)
from .grpo import GroupPGConfig
from .hpt import HPTConfig
from .kl import KL_FORMS, kl_k3_loss_grad, kl_reverse_grad
from .kl_penalty import KLConfig
from .luffy import LUFFYConfig
from .options import parse_option, set_option
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
    "RL_AGGREGATIONS", "ConfigError", "Recipe", "binomial_gate_probability",
    "binomial_group_coefficient", "binomial_off_advantage", "group_advantage", "BUFFER_ORDERS",
    "buffer_push", "buffer_take", "MAX_GROUP_ENUMERATION", "InfeasibleExactField",
    "compositions", "reward_levels", "sample_group_advantage", "GroupPGConfig", "HPTConfig",
    "KL_FORMS", "kl_k3_loss_grad", "kl_reverse_grad", "KLConfig", "LUFFYConfig", "parse_option",
    "set_option",
    "PPOClipConfig", "ReinforceConfig",
    "FUSION_RECIPES", "RECIPES", "get_recipe", "recipe_estimate", "recipe_field", "recipe_sample",
    "resolve_config", "ReLIFTConfig", "Draws", "draw", "SFTConfig", "SRFTConfig",
    "RecipeTrajectory", "train_recipe", "train_recipe_sampled",
]
