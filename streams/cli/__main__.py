"""``python -m streams.cli``: the ``recstream`` command (tests and benchmarks start workers this way)."""

import sys

from . import main

sys.exit(main())
