"""``python -m pmg_core`` is the ``pmg`` command."""

import sys

from .cli import main

sys.exit(main())
