"""``python -m contrastkit`` is the ``contrastkit`` command."""

import sys

from contrastkit.cli import main

sys.exit(main())
