"""``python -m flowjoint`` runs the command line (see :mod:`flowjoint.cli`)."""

import sys

from flowjoint.cli import main

sys.exit(main())
