"""``python -m e2vpt`` (and ``torchrun -m e2vpt``) runs the command line."""

import sys

from e2vpt.cli.main import main

sys.exit(main())
