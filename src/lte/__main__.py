"""``python -m lte ...``: the ``lte`` command line without an installed entry point."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
