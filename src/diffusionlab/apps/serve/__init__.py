"""``diffusionlab serve``: a live, offline page over the user's own checkpoints.

- ``catalog``: the checkpoints under ``--runs`` (ids, descriptions, loading; nothing outside it);
- ``jobs``: the bounded queue and its worker thread(s); events per job;
- ``work``: what is computed, through the public API only (sampling with its per-step callback,
  the guidance wrappers, the pipelines, the forward process, tokens, the architecture);
- ``api``: the FastAPI app (routes, request schemas, limits, token);
- ``static/``: the page (plain HTML / JS / CSS, served by the package: no outside host).
"""
