"""``python -m mobilekd.weight_selection``: the command of ``mobilekd.weights.selection`` at its documented path."""

import sys

from mobilekd.weights.selection import main

if __name__ == "__main__":
    sys.exit(main())
