"""``python -m mobilekd.weights``: see ``mobilekd.weights.cli``."""

from mobilekd.weights.cli import main

raise SystemExit(main())
