"""A WBM-like set of starting structures, made offline from a fixed seed, and a loader for the real WBM files.

WBM (Wang et al., npj Comput. Mater. 7, 12, 2021; the test set of Matbench Discovery) made its structures by
replacing one element of a known crystal by a chemically similar one in the parent's lattice, so many start
far from their own equilibrium volume. The proxy does the same on common prototypes
(:data:`atomopt.bench.crystals.PROTOTYPES` plus layered, open-framework and larger cells): each species is
replaced by a random member of its substitution group, the parent's lattice scaled by a covalent-radius volume
guess (see :func:`substitute`), then the cell is strained
(±``strain`` per axis), sheared, and the atoms rattled (0.05–0.15 Å), in supercells of 2–40 atoms.

    python -m atomopt.bench.wbm_proxy [--n 160] [--seed 2026] [-o data/wbm_proxy.extxyz]

:func:`load_wbm` reads Matbench Discovery's own files for users who have them: the initial structures (a zip of
extxyz files, ``wbm-initial-atoms.extxyz.zip``) and, optionally, the summary CSV whose ``uncorrected_energy``
(eV, total) and ``n_sites`` give the DFT energy per atom that errors are measured against.
"""

from __future__ import annotations

import argparse
import csv
import io
import zipfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.io import read, write
from ase.spacegroup import crystal

from atomopt.bench.crystals import PROTOTYPES, prototype, strain_and_rattle

#: Chemically similar elements (WBM substitutes within such neighbourhoods of the periodic table).
GROUPS: tuple[tuple[str, ...], ...] = (
    ("Li", "Na", "K", "Rb", "Cs"),
    ("Be", "Mg", "Ca", "Sr", "Ba"),
    ("Zn", "Cd", "Mg"),
    ("B", "Al", "Ga", "In"),
    ("C", "Si", "Ge", "Sn"),
    ("N", "P", "As", "Sb"),
    ("O", "S", "Se", "Te"),
    ("F", "Cl", "Br", "I"),
    ("Sc", "Y", "La"),
    ("Ti", "Zr", "Hf"),
    ("V", "Nb", "Ta"),
    ("Cr", "Mo", "W"),
    ("Mn", "Fe", "Co"),
    ("Ni", "Pd", "Pt"),
    ("Cu", "Ag", "Au"),
    ("Ce", "Zr", "Hf"),
    ("Pb", "Sn"),
    ("Al", "Ga"),
)
DEFAULT_PROXY = Path(__file__).resolve().parents[2] / "data" / "wbm_proxy.extxyz"


def _hard_cases() -> list[tuple[str, Atoms]]:
    """Layered, open-framework and larger parents (ideal, at their experimental lattices)."""
    return [
        (
            "CdI2-layered",
            crystal(
                ["Ti", "S"], [(0, 0, 0), (1 / 3, 2 / 3, 0.25)], spacegroup=164, cellpar=[3.41, 3.41, 5.70, 90, 90, 120]
            ),
        ),
        (
            "MoS2-2H",
            crystal(
                ["Mo", "S"],
                [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)],
                spacegroup=194,
                cellpar=[3.16, 3.16, 12.29, 90, 90, 120],
            ),
        ),
        ("ReO3-open", crystal(["W", "O"], [(0, 0, 0), (0.5, 0, 0)], spacegroup=221, cellpar=[3.75] * 3 + [90] * 3)),
        (
            "rutile",
            crystal(
                ["Ti", "O"], [(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136, cellpar=[4.59, 4.59, 2.96, 90, 90, 90]
            ),
        ),
        (
            "spinel",
            crystal(
                ["Mg", "Al", "O"],
                [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.263, 0.263, 0.263)],
                spacegroup=227,
                setting=2,
                cellpar=[8.08] * 3 + [90] * 3,
                primitive_cell=True,
            ),
        ),
        ("CsCl-2x2x2", prototype("CsCl", "cesiumchloride", 4.12) * (2, 2, 2)),
    ]


def parents() -> list[tuple[str, Atoms]]:
    """Every parent crystal of the proxy: (name, ideal structure)."""
    common = [(f"{formula}-{kind}", prototype(formula, kind, a, c)) for formula, kind, a, c in PROTOTYPES]
    return common + _hard_cases()


def substitute(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """Each species replaced by a random member of one of its groups (itself possible); the parent's cell shape
    kept and its volume scaled by the atoms' covalent volumes, Σr³(new)/Σr³(old).

    The crude volume guess is what substitution workflows do before relaxing, and its error (ionic crystals
    are not covalent spheres) leaves many starts far from their own volume. Keeping the parent's volume
    instead puts e.g. KBr into LiF's cell at a quarter of its volume, where SevenNet-0 collapses every
    method's run to about −38 eV/atom: a test of the model's holes, not of optimizers.
    """
    out = atoms.copy()
    mapping = {}
    for symbol in dict.fromkeys(atoms.get_chemical_symbols()):
        options = sorted({s for group in GROUPS if symbol in group for s in group}) or [symbol]
        choice = options[rng.integers(len(options))]
        mapping[symbol] = choice if choice not in mapping.values() else symbol  # species stay distinct
    out.set_chemical_symbols([mapping[s] for s in atoms.get_chemical_symbols()])
    ratio = (covalent_radii[out.numbers] ** 3).sum() / (covalent_radii[atoms.numbers] ** 3).sum()
    out.set_cell(atoms.cell[:] * ratio ** (1 / 3), scale_atoms=True)
    return out


def too_close(atoms: Atoms, fraction: float = 0.5) -> bool:
    """Whether two atoms sit closer than ``fraction`` × the sum of their covalent radii."""
    distances = atoms.get_all_distances(mic=True)
    radii = covalent_radii[atoms.numbers]
    limit = fraction * (radii[:, None] + radii[None, :])
    np.fill_diagonal(distances, np.inf)
    return bool((distances < limit).any())


def wbm_proxy(
    n: int = 160,
    seed: int = 2026,
    strain: float = 0.10,
    shear: float = 0.05,
    rattle: tuple[float, float] = (0.05, 0.15),
    max_atoms: int = 40,
) -> list[Atoms]:
    """``n`` WBM-like starting structures (2–``max_atoms`` atoms), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    pool = parents()
    out: list[Atoms] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError("wbm_proxy: too many rejected structures (overlapping atoms); loosen strain or rattle")
        name, parent = pool[len(out) % len(pool)]
        atoms = substitute(parent, rng)
        target = np.exp(rng.uniform(np.log(2), np.log(max_atoms)))  # sizes spread evenly on a log scale
        repeat = [1, 1, 1]
        while len(atoms) * np.prod(repeat) < 2 or len(atoms) * np.prod(repeat) * 2 <= target:
            repeat[int(rng.integers(3))] *= 2
        atoms = atoms * tuple(repeat)
        strain_and_rattle(atoms, rng, 1.0 + rng.uniform(-strain, strain, size=3), shear, rattle)
        if len(atoms) > max_atoms or too_close(atoms):
            continue
        atoms.info = {}
        atoms.info.update(material_id=f"proxy-{len(out) + 1:04d}", parent=name, formula=atoms.get_chemical_formula())
        out.append(atoms)
    return out


def load_proxy(path: str | Path = DEFAULT_PROXY) -> list[Atoms]:
    """The shipped proxy set (``data/wbm_proxy.extxyz``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"proxy set {path} not found; make it with: python -m atomopt.bench.wbm_proxy -o {path}"
        )
    return read(path, ":")


def load_wbm(structures: str | Path, summary: str | Path | None = None, n: int | None = None) -> list[Atoms]:
    """WBM initial structures from Matbench Discovery's zip of extxyz files, with DFT energies when given.

    Args:
        structures: ``wbm-initial-atoms.extxyz.zip`` (one or more extxyz members; ``material_id`` from each
            frame's info, else the member's name without extension), or a plain extxyz file.
        summary: the WBM summary CSV (``material_id``, ``n_sites``, ``uncorrected_energy`` in eV): each structure
            gets ``info["dft_energy_per_atom"]`` (eV/atom).
        n: only the first ``n`` structures.

    Raises:
        FileNotFoundError: a file is missing. ValueError: the CSV lacks a needed column or a structure.
    """
    structures = Path(structures)
    if not structures.is_file():
        raise FileNotFoundError(
            f"WBM structures file {structures} not found (Matbench Discovery's wbm-initial-atoms.extxyz.zip)"
        )
    frames: list[Atoms] = []
    if zipfile.is_zipfile(structures):
        with zipfile.ZipFile(structures) as archive:
            for member in sorted(archive.namelist()):
                if not member.endswith((".extxyz", ".xyz")):
                    continue
                for atoms in read(io.StringIO(archive.read(member).decode()), ":", format="extxyz"):
                    atoms.info.setdefault("material_id", Path(member).stem.split(".")[0])
                    frames.append(atoms)
                if n is not None and len(frames) >= n:
                    break
    else:
        frames = read(structures, ":")
    frames = frames[:n] if n is not None else frames
    if summary is not None:
        summary = Path(summary)
        if not summary.is_file():
            raise FileNotFoundError(f"WBM summary CSV {summary} not found")
        with open(summary, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"material_id", "n_sites", "uncorrected_energy"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"WBM summary CSV {summary} lacks the columns {sorted(missing)}")
            energies = {row["material_id"]: float(row["uncorrected_energy"]) / float(row["n_sites"]) for row in reader}
        for atoms in frames:
            key = atoms.info["material_id"]
            if key not in energies:
                raise ValueError(f"structure {key} is not in the WBM summary {summary}")
            atoms.info["dft_energy_per_atom"] = energies[key]
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=160)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("-o", "--output", default=str(DEFAULT_PROXY))
    args = parser.parse_args(argv)
    structures = wbm_proxy(args.n, args.seed)
    write(args.output, structures, format="extxyz")
    sizes = [len(a) for a in structures]
    print(
        f"{len(structures)} structures, {min(sizes)}-{max(sizes)} atoms, "
        f"{len({a.info['parent'] for a in structures})} parents -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
