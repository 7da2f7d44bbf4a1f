"""``python -m daelab`` runs the command line (also under ``torchrun -m daelab``)."""
import sys

from daelab.cli import main

sys.exit(main())
