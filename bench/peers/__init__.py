"""Side-by-side benchmark of agentpool against Celery, RQ, arq and Dramatiq.

Run from the repository root:

    .venv/bin/python -m bench.peers            # full run (about 10 minutes)
    .venv/bin/python -m bench.peers --quick    # about 2 minutes, fewer samples, shorter caps

The orchestrator (``run.py``) runs in the project's environment. Each peer runs in a virtual
environment of its own (``venvs.py``): the latest releases of the peers cannot share one
environment with each other or with the product (see bench/README.md). The ``drv_*`` modules
are the per-system drivers: task functions, worker configuration and producer commands.
"""
