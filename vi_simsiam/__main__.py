"""``python -m vi_simsiam ...`` (also what ``torchrun -m vi_simsiam`` runs)."""

import sys

from .cli import main

sys.exit(main())
