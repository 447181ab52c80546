"""``python -m diffusionlab``: the ``diffusionlab`` command (``apps.cli.main``)."""
import sys

from .apps.cli import main

sys.exit(main())
