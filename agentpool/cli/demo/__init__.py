"""`agentpool demo`: a local run of workers, a task batch and a worker killed half-way.

command.py wires the CLI, runner.py starts and stops processes and drives the run, view.py
renders it, summary.py computes the end figures from plain task records.
"""

from agentpool.cli.demo.command import register

__all__ = ["register"]
