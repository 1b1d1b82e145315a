"""Every benchmark command the docs name starts: its ``--help`` answers. Nothing else runs the
scripts between benchmark runs, so a module they import that moved would otherwise go unseen
until someone follows the docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "bench" / "README.md", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python (-m bench\.[a-z_.]+|bench/[a-z_]+\.py)")


def documented_commands() -> list[str]:
    found = {match for doc in DOCS for match in COMMAND.findall(doc.read_text())}
    return sorted(found)


def test_the_docs_name_the_benchmarks() -> None:
    commands = documented_commands()
    assert "-m bench.peers" in commands
    assert "bench/recovery.py" in commands
    assert len(commands) >= 15


def test_every_documented_benchmark_answers_help() -> None:
    running = {
        command: subprocess.Popen(
            [sys.executable, *command.split(), "--help"], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for command in documented_commands()
    }
    failed = {}
    for command, process in running.items():
        out, err = process.communicate(timeout=120)
        if process.returncode != 0 or "usage" not in out.lower():
            failed[command] = (err.strip().splitlines() or [out[:200]])[-1]
    assert failed == {}
