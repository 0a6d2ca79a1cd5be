"""Exact mathematics on tabular softmax policies (pure JAX, float64, log space).

Importing this package turns on JAX's float64 mode (``jax_enable_x64``): every quantity here is
specified in float64, and the valid domain is stated for it.

Modules: :mod:`.instance` (the problem), :mod:`.objectives` (L, J, J_β, the Gibbs tilt and the
gradients), :mod:`.statements` (every checked statement, grouped by subject), :mod:`.quantities`,
:mod:`.frontier`, :mod:`.flows`, :mod:`.parametric` and :mod:`.gold_task` (shared parameters),
:mod:`.recipes`. Nothing here imports the rest of the toolkit.
"""

import jax

jax.config.update("jax_enable_x64", True)
