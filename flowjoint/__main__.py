"""``python -m flowjoint`` runs the command line (see `cli`)."""

import sys

from flowjoint.cli import main

sys.exit(main())
