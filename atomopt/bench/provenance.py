"""Where a benchmark's numbers come from: the machine and package versions its results record, and the header of
its Markdown report."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version


def machine_facts(*packages: str) -> dict[str, object]:
    """Platform, CPU count, Python and the versions of ``packages`` (their installed distribution names)."""
    facts: dict[str, object] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in packages:
        try:
            facts[name] = version(name)
        except PackageNotFoundError:
            facts[name] = "not installed"
    return facts


def report_header(title: str, command: str, machine: str, between: Sequence[str] = ()) -> list[str]:
    """The first lines of a results page: the title, the exact command (then ``between``), the machine."""
    return [f"# {title}", "", f"Command: `{command}`  ", *between, f"Machine: {machine}", ""]
