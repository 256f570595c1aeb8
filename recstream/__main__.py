"""``python -m recstream``: the ``recstream`` command (tests and benchmarks start workers this way)."""

import sys

from recstream.streams.cli import main

sys.exit(main())
