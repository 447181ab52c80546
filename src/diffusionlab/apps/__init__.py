"""Applications (layer L5): the command line (``apps.cli``, entry point ``diffusionlab.apps.cli:entry``)
and ``make demo`` (``apps.demo``); the web app comes here."""
