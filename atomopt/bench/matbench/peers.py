"""Running a peer's rows in its own environment: the structures go over as extxyz, a JSON spec names them and the
run's settings, and the peer's worker prints one JSON row per structure (the journal's row format)."""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms

from atomopt.bench.matbench.build import Task

#: ``atoms.info`` key carrying a structure's index in the benchmark set across the environments.
INDEX_KEY = "bench_index"


def error_rows(task: Task, message: str) -> list[dict]:
    """Every structure of ``task`` failed with ``message`` (e.g. a peer whose environment is missing)."""
    failed = {"status": "error", "message": message, "force_calls": 0, "energy": math.nan, "energy_per_atom": math.nan}
    return [
        {
            "method": task.method,
            "index": i,
            "n_atoms": len(a),
            "seconds": 0.0,
            "outcomes": {t.name: failed for t in task.targets},
        }
        for i, a in task.items
    ]


def run_worker(
    task: Task, command: Sequence[str], peer: str, settings: dict, env: dict[str, str] | None = None
) -> list[dict]:
    """Run ``command`` (a peer environment's Python and its worker entry) on ``task``'s structures; the spec it gets
    as its last argument holds the structures' file, the targets and ``settings``."""
    from ase.io import write

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "structures.extxyz"
        frames = []
        for i, a in task.items:
            frame = a.copy()
            frame.info = {INDEX_KEY: i}
            frames.append(frame)
        write(path, frames, format="extxyz")
        spec = {"structures": str(path), "targets": [t.__dict__ for t in task.targets], **settings}
        done = subprocess.run([*command, json.dumps(spec)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the {peer} run failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def read_items(path: str) -> list[tuple[int, Atoms]]:
    """Inside a worker: the (index, structure) pairs :func:`run_worker` wrote."""
    from ase.io import read

    return [(int(a.info.pop(INDEX_KEY)), a) for a in read(path, ":")]
