"""``python -m entropy_fetch``: the same as the ``entropy-fetch`` command."""

import sys

from entropy_fetch.cli import main

sys.exit(main())
