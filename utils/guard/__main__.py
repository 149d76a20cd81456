"""`python -m utils.guard train.py [args...]`: see utils/guard/cli.py (notebook 08)."""

import sys

from utils.guard.cli import main

sys.exit(main())
