"""What Frankenstein's FIRE control does on a HEA polycrystal, step by step.

    python benchmarks/hea_restarts.py [--atoms 2000] [--grains 8] [--seed 0] [--steps 400]
                                      [--potdir ../shared/potentials] [--variants default beta1_lr=0.05 ...]

The HEA benchmark's logs give only the final learning rate and the number of FIRE restarts (there ~460 in 3000
steps, lr from 0.05 Å down to 0.001–0.003 Å). This drives atomopt's core minimizer directly on LAMMPS's 2NN MEAM
forces of one polycrystal (built as ``atomopt bench hea`` builds it) and records every step: energy, force norm,
learning rate, whether the step before was found uphill (FIRE's power test P = F·Δθ < 0), whether the rule was
restarted for it, and that step's energy change. Summary per variant: uphill steps, restarts, runs of consecutive
restarts (bursts), the share of restarts whose step had lowered the energy, lowest and final lr. Writes
``benchmarks/results/hea_restarts.{json,md}``.

A variant is ``default`` or ``key=value,...`` in ``min_modify`` keywords (as the ``NAME@key=value`` variants of
``atomopt bench hea``): ``lr``, ``eps``, a rule hyperparameter (``beta1_lr``), ``fire_<field>`` for a field of the
FIRE control (``fire_measured_cut=yes``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atomopt.bench.hea import TYPE_ORDER, polycrystal, write_data
from atomopt.bench.provenance import report_header
from atomopt.core.layout import Layout
from atomopt.frontends.lammps.runner import optimizer_options
from atomopt.lammps import import_lammps
from atomopt.optimizers import make_minimizer

RESULTS = Path(__file__).parent / "results"


def parse_variant(text: str) -> dict:
    """``default`` or ``key=value,...`` in ``min_modify`` keywords, as ``atomopt bench hea``'s variants."""
    if text == "default":
        return {}
    return optimizer_options(dict(pair.partition("=")[::2] for pair in text.split(",")))


class MeamForces:
    """Energy (eV) and forces (eV/Å) of the polycrystal under the 2NN MEAM, after moving the atoms by ``d``."""

    def __init__(self, data: Path, potdir: Path) -> None:
        self.lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
        elements = " ".join(TYPE_ORDER)
        for line in (
            "units metal",
            "atom_style atomic",
            "boundary p p p",
            "atom_modify map array sort 0 0",  # rows stay in place: the optimizer state is per row
            f"read_data {data}",
            "pair_style meam",
            f"pair_coeff * * {potdir}/library.meam {elements} {potdir}/CoNiCrFeMn.meam {elements}",
            "neighbor 2.0 bin",
            "neigh_modify delay 0 every 1 check yes",
            "thermo_style custom step pe",
        ):
            self.lmp.command(line)
        self.n = self.lmp.get_natoms()

    def __call__(self, d: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        if d is not None:
            self.lmp.numpy.extract_atom("x")[: self.n] += d.numpy()
        self.lmp.command("run 0 post no")
        return torch.tensor(self.lmp.numpy.extract_atom("f")[: self.n].copy()), float(self.lmp.get_thermo("pe"))

    def close(self) -> None:
        self.lmp.close()


def trace(data: Path, potdir: Path, options: dict, steps: int) -> dict:
    forces = MeamForces(data, potdir)
    minimizer = make_minimizer("frankenstein", **options)
    layout = Layout.single(forces.n)
    f, energy = forces()
    state = minimizer.init(-f, layout)
    rows = []
    start = time.perf_counter()
    for _ in range(steps):
        d, state = minimizer.step(state, -f, layout)
        uphill, restarted = bool(minimizer.found_uphill(state)[0]), bool(minimizer.restarted(state)[0])
        f, new_energy = forces(d)
        rows.append(
            {
                "energy": new_energy,
                "fnorm": float(f.norm()),
                "lr": float(state["lr"][0]),
                "uphill": uphill,
                "restarted": restarted,
                "step_energy_change": rows[-1]["energy_change"] if rows else None,
                "energy_change": new_energy - energy,
            }
        )
        energy = new_energy
    wall = time.perf_counter() - start
    forces.close()
    flags = [r["restarted"] for r in rows]
    bursts, run = [], 0
    for flag in flags + [False]:
        if flag:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    # a restart is found at step i on the step i−1 took: did that step lower the energy?
    found_downhill = [
        r["step_energy_change"] < 0 for r in rows if r["restarted"] and r["step_energy_change"] is not None
    ]
    lrs = [r["lr"] for r in rows]
    return {
        "options": options,
        "steps": steps,
        "wall_seconds": wall,
        "final_energy": energy,
        "uphill_steps": sum(r["uphill"] for r in rows),
        "restarts": sum(flags),
        "bursts": len(bursts),
        "longest_burst": max(bursts, default=0),
        "mean_burst": float(np.mean(bursts)) if bursts else 0.0,
        "restarts_after_a_lower_energy": float(np.mean(found_downhill)) if found_downhill else None,
        "lr_min": min(lrs),
        "lr_final": lrs[-1],
        "steps_trace": rows,
    }


def markdown(payload: dict) -> str:
    lines = [
        *report_header(
            f"Frankenstein's FIRE restarts on a HEA polycrystal ({payload['natoms']} atoms, {payload['grains']} "
            f"grains, seed {payload['seed']}), {payload['steps']} steps",
            payload["command"],
            f"{payload['machine']}; torch {payload['torch']}",
        ),
        "Uphill: FIRE's power test found the step before uphill (P = F·Δθ < 0) and the gain was cut. Restart: "
        "the rule's state was restarted too (on every uphill step unless `fire_restart_below` spares the mild "
        "overshoots). Burst: consecutive restarts. Lower energy: share of restarts whose uphill step had "
        "nevertheless lowered the energy.",
        "",
        "| variant | uphill | restarts | bursts | longest / mean burst | lower energy | lr min / final Å | "
        "final energy eV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["variants"].items():
        share = "–" if r["restarts_after_a_lower_energy"] is None else f"{r['restarts_after_a_lower_energy']:.2f}"
        lines.append(
            f"| {name} | {r['uphill_steps']} | {r['restarts']} | {r['bursts']} | "
            f"{r['longest_burst']} / {r['mean_burst']:.1f} | {share} | {r['lr_min']:.4f} / {r['lr_final']:.4f} | "
            f"{r['final_energy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=2000)
    parser.add_argument("--grains", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--potdir", default="../shared/potentials")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[
            "default",
            "beta1_lr=0.05",
            "eps=1",
            "fire_measured_cut=yes",
            "fire_acts_on=eps",
            "fire_restart_below=0.5",
        ],
    )
    parser.add_argument("--tag", default="hea_restarts")
    args = parser.parse_args()
    potdir = Path(args.potdir).resolve()
    if not (potdir / "library.meam").is_file():
        raise SystemExit(f"library.meam not in {potdir}: pass the MEAM folder with --potdir")
    payload = {
        "command": "python " + " ".join(sys.argv),
        "atoms_requested": args.atoms,
        "grains": args.grains,
        "seed": args.seed,
        "steps": args.steps,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "polycrystal.data"
        atoms = polycrystal(args.atoms, args.grains, args.seed, size_after_deletion=False)  # as its committed table
        payload["natoms"] = len(atoms)
        write_data(atoms, data)
        for variant in args.variants:
            options = parse_variant(variant)
            payload["variants"][variant] = trace(data, potdir, options, args.steps)
            print(variant, {k: v for k, v in payload["variants"][variant].items() if k != "steps_trace"}, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
