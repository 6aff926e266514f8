"""The experiments live beside the package (experiments/): their tests import them from the
repository root, put on sys.path here once for every test file of this folder."""

import sys

from scripts import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
