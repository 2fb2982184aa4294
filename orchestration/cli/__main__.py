"""`python -m orchestration.cli`: the same as `cxr`."""

import sys

from orchestration.cli import main

sys.exit(main())
