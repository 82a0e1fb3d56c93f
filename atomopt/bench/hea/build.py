"""HEA benchmark, the inputs: CoCrFeMnNi polycrystals (mdapy Voronoi grains), their LAMMPS data files, the machine."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
from ase import Atoms

HEA_ELEMENTS = ("Co", "Cr", "Fe", "Mn", "Ni")


#: fcc lattice constant of CoCrFeMnNi with Choi et al.'s 2NN MEAM, Å (as in the issue's 20,057-atom measurement).
HEA_LATTICE = 3.60


def box_for_atoms(n_atoms: int, a: float = HEA_LATTICE) -> float:
    """Edge of the cubic box holding about ``n_atoms`` fcc atoms (4 per a³), Å."""
    return float((n_atoms * a**3 / 4) ** (1 / 3))


def polycrystal(
    n_atoms: int,
    grains: int,
    seed: int = 0,
    a: float = HEA_LATTICE,
    overlap: float = 2.0,
    elements: tuple[str, ...] = HEA_ELEMENTS,
    size_after_deletion: bool = True,
) -> Atoms:
    """A periodic cubic polycrystal of about ``n_atoms`` atoms in ``grains`` random grains (deterministic for
    ``seed``), species in equal shares (counts differ by at most one).

    Args:
        n_atoms: target number of atoms (the box is first sized for it; overlap removal at the boundaries takes
            off more the smaller the grains: 12 % at 2000 atoms in 4 grains, 6 % at 20,000 in 4).
        grains: number of Voronoi grains, at least 1.
        seed: seeds grain centres, orientations and the species.
        a: fcc lattice constant, Å.
        overlap: atoms closer than this at grain boundaries are removed, Å.
        size_after_deletion: shrink the box and the atoms with it to the fcc number density 4/a³ of the atoms
            that remain, so that a fixed-box relaxation starts near zero pressure (with the box sized before the
            deletion, every fixed-box run of the 20,000-atom series ended near −8 GPa); the closest boundary
            pairs shrink with it (below ``overlap`` by the same few per cent). ``False``: the earlier
            construction, which the tables made before it was sized used.
    """
    from mdapy import CreatePolycrystal
    from mdapy.build_lattice import build_crystal

    if n_atoms < 4 or grains < 1:
        raise ValueError(f"need at least 4 atoms and 1 grain, got {n_atoms} atoms and {grains} grains")
    unit = build_crystal("Ni", "fcc", a)
    with contextlib.redirect_stdout(io.StringIO()):  # mdapy prints a progress banner
        system = CreatePolycrystal(
            unit, box=box_for_atoms(n_atoms, a), seed_number=grains, randomseed=seed, metal_overlap_dis=overlap
        ).compute()
    atoms = system.to_ase()
    if size_after_deletion:
        scale = (len(atoms) * a**3 / 4 / atoms.cell.volume) ** (1 / 3)
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    atoms.wrap()
    grain_id = np.asarray(system.data["grain_id"])
    rng = np.random.default_rng(seed)
    species = np.resize(np.array(elements), len(atoms))
    atoms.set_chemical_symbols(rng.permutation(species).tolist())
    atoms.arrays["grain"] = grain_id.astype(int)
    atoms.info.update(grains=grains, seed=seed, lattice=a, sized_after_deletion=size_after_deletion)
    return atoms


#: LAMMPS atom types of the MEAM files' element order (as examples/lammps/hea_meam_system.in).
TYPE_ORDER = ("Co", "Ni", "Cr", "Fe", "Mn")


def write_data(atoms: Atoms, path) -> None:
    """LAMMPS data file (atom_style atomic, types in :data:`TYPE_ORDER`, masses)."""
    from ase.io import write

    write(path, atoms, format="lammps-data", specorder=list(TYPE_ORDER), masses=True, atom_style="atomic")


#: A journal key: g{grains}_{fixed|box}_{method}[_s{seed}] (method names may hold underscores: fire_f_dec=...).
RUN_KEY = re.compile(r"g(?P<grains>\d+)_(?P<box>fixed|box)_(?P<method>.+?)(?:_s(?P<seed>\d+))?")


def polycrystal_of(row: dict) -> tuple[int, bool, int]:
    """(grains, box relaxed, seed) of a journal row or table entry: the runs that compare with each other."""
    return row["grains"], row["box"], row.get("seed", 0)


def _machine() -> dict:
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("lammps", "mdapy", "ovito", "ase"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "versions": versions}


def _polycrystal(check: dict) -> str:
    seed = f", seed {check['seed']}" if check.get("seed") else ""
    return f"{check['grains']} grains{seed}, {'box relaxed' if check['box'] else 'fixed box'}"
