"""``python -m ssa``: the command line."""

import sys

from ssa.cli import main

sys.exit(main())
