"""``python -m mobilekd.compat``: see ``mobilekd.compat.cli``."""

import sys

from mobilekd.compat.cli import main

sys.exit(main())
