"""`python -m napari_cosdd` (and `torchrun -m napari_cosdd train ...`) runs the command line."""

import sys

from napari_cosdd.cli import main

sys.exit(main())
