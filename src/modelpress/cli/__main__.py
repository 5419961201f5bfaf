"""``python -m modelpress.cli`` (what ``torchrun -m modelpress.cli`` runs)."""

import sys

from modelpress.cli.main import main

sys.exit(main())
