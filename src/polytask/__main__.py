"""``python -m polytask`` (and ``accelerate launch -m polytask``) run the CLI."""

import sys

from polytask.cli import main

sys.exit(main())
