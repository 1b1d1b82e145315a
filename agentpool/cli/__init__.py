"""The `agentpool` command line: one module per command group, `main.py` wires them.

Needs the `cli` extra (`pip install 'agentpool[cli]'`); nothing outside this package imports it.
"""
