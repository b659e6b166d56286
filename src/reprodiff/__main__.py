"""``python -m reprodiff`` (also what ``torchrun -m reprodiff`` runs)."""

import sys

from .cli import main

sys.exit(main())
