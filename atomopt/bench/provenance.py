"""Where a benchmark's numbers come from: the machine and package versions its results record, and the header of
its Markdown report."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def processor() -> str:
    """The CPU's vendor and model name (/proc/cpuinfo; ``platform`` elsewhere). Results reproduce bit for bit only on
    the processor that made them: math libraries pick their vectorised kernels by instruction set."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("vendor_id", "model name"):
                fields.setdefault(key.strip(), value.strip())
        return f"{fields['vendor_id']} {fields['model name']}"
    except (OSError, KeyError):
        return f"{platform.machine()} {platform.processor()}".strip()


def machine_facts(*packages: str) -> dict[str, object]:
    """Platform, processor, CPU count, Python and the versions of ``packages`` (their installed distribution names)."""
    facts: dict[str, object] = {
        "platform": platform.platform(),
        "processor": processor(),
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
