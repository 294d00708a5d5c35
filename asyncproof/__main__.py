"""``python -m asyncproof``: the same as the ``asyncproof`` command."""

import sys

from asyncproof.cli import main

sys.exit(main())
