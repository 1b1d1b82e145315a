"""README's "Producing tasks from Python" example, run as written (only its Redis URL and
queue name swapped for the test's) against a real redis-server and a worker."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "worker"))

from worker_helpers import HANDLERS, running, settings  # noqa: E402

README_URL = "redis://127.0.0.1:6379/0"


def producer_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Producing tasks from Python", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "README has no Python example under 'Producing tasks from Python'"
    return found.group(1)


def test_the_example_names_the_url_and_queue_it_is_run_with() -> None:
    source = producer_example()
    assert README_URL in source
    assert 'client.queue("demo")' in source


async def test_the_producer_example_runs_as_written(redis_url: str, queue_name: str) -> None:
    source = producer_example().replace(README_URL, redis_url).replace(
        'client.queue("demo")', f'client.queue("{queue_name}")')
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:summariser")):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", source,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        "succeeded {'summary': 'summarise'}",
        "1 word {'text': 'summarise'}",
        "1 word {'text': 'this'}",
        "1 final {'state': 'succeeded'}",
    ]
