"""`python -m cli ...` runs the `dataflux` command."""

import sys

from cli.main import main

sys.exit(main())
