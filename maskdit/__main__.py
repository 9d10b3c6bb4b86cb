"""``python -m maskdit`` is the command line (what torchrun launches)."""

import sys

from maskdit.cli.app import main

sys.exit(main())
