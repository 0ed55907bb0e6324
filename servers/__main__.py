"""`python -m servers BACKEND ...`: the same as `harness serve`, without importing the harness."""

import sys

from servers.foreground import main

sys.exit(main())
