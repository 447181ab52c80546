"""``python -m diffusionlab``: the ``diffusionlab`` command (``apps.cli.entry``)."""
from .apps.cli import entry

entry()
