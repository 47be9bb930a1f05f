"""`python -m ops.bench`: run the benchmark and print its table."""

import sys

from ops.bench.cli import main

sys.exit(main())
