"""``python -m difflab.cli ...`` (e.g. under ``torchrun -m difflab.cli train ...``): the ``difflab`` command."""

import sys

from . import main

sys.exit(main())
