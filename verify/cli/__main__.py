"""``python -m nondecoupling.verify.cli``: the same as the `nondecoupling` command."""

from . import entry

entry()
