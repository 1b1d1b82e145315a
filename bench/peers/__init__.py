"""Side-by-side benchmark of agentpool against Celery, RQ, arq, Dramatiq and taskiq.

Run from the repository root:

    .venv/bin/python -m bench.peers            # full run (about 20 minutes for all six systems)
    .venv/bin/python -m bench.peers --quick    # about 9 minutes, fewer samples, shorter caps

The orchestrator (``run.py``) runs in the project's environment. Each peer runs in a virtual
environment of its own (``venvs.py``): the latest releases of the peers cannot share one
environment with each other or with the product (see bench/README.md). The ``drv_*`` modules
are the per-system drivers: task functions, worker configuration and producer commands.
"""
