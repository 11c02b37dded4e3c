"""``python -m sserelay``: the ``sserelay`` command (see :mod:`sserelay.cli`)."""

import sys

from .cli import main

sys.exit(main())
