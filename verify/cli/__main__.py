"""``python -m nondecoupling.verify.cli``: the same as the `nondecoupling` command."""

import sys

from . import main

sys.exit(main())
