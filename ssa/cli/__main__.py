"""``python -m ssa.cli``: the command line."""

import sys

from ssa.cli import main

sys.exit(main())
