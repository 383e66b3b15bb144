"""``python -m edgequery.commands``: the same entry point as the ``edgequery`` script."""

import sys

from . import main

sys.exit(main())
