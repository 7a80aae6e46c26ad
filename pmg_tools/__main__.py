"""``python -m pmg_tools`` is the checkout's ``./pmg`` command."""

import sys

from .cli import main

sys.exit(main())
