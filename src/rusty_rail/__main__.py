"""`python -m rusty_rail`: the same as the `rusty-rail` command."""

import sys

from rusty_rail.cli import main

sys.exit(main())
