"""A seeded set of small mixed crystals (oxides, halides, sulfides, pnictides, metals, intermetallics).

Each is a common prototype at roughly its experimental lattice constant, then
strained (isotropic ±``strain``, plus a small random shear) and rattled, so
that both atoms and cell have work to do, as in a discovery pipeline whose
starting structures come from substitution into prototypes. Deterministic for
a given seed.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk

# (formula, prototype, a in Å, c in Å or None) — prototypes ase.build.bulk knows, plus perovskite and L1₂ below.
PROTOTYPES: tuple[tuple[str, str, float, float | None], ...] = (
    ("NaCl", "rocksalt", 5.64, None),
    ("MgO", "rocksalt", 4.21, None),
    ("LiF", "rocksalt", 4.03, None),
    ("KCl", "rocksalt", 6.29, None),
    ("CaO", "rocksalt", 4.81, None),
    ("PbS", "rocksalt", 5.94, None),
    ("ZnS", "zincblende", 5.41, None),
    ("GaAs", "zincblende", 5.65, None),
    ("CdTe", "zincblende", 6.48, None),
    ("AlP", "zincblende", 5.46, None),
    ("ZnO", "wurtzite", 3.25, 5.21),
    ("GaN", "wurtzite", 3.19, 5.19),
    ("CdS", "wurtzite", 4.14, 6.72),
    ("CsCl", "cesiumchloride", 4.12, None),
    ("NiAl", "cesiumchloride", 2.88, None),
    ("CuZn", "cesiumchloride", 2.95, None),
    ("CaF2", "fluorite", 5.46, None),
    ("CeO2", "fluorite", 5.41, None),
    ("SrTiO3", "perovskite", 3.905, None),
    ("BaZrO3", "perovskite", 4.19, None),
    ("Ni3Al", "L12", 3.57, None),
    ("Cu3Au", "L12", 3.75, None),
    ("Si", "diamond", 5.43, None),
    ("Ge", "diamond", 5.66, None),
    ("Cu", "fcc", 3.61, None),
    ("Al", "fcc", 4.05, None),
    ("Fe", "bcc", 2.87, None),
    ("Mo", "bcc", 3.15, None),
    ("Mg", "hcp", 3.21, 5.21),
    ("Ti", "hcp", 2.95, 4.68),
    ("ZnSe", "zincblende", 5.67, None),
    ("KBr", "rocksalt", 6.60, None),
)


def prototype(formula: str, kind: str, a: float, c: float | None = None) -> Atoms:
    """The ideal crystal of ``formula`` in prototype ``kind``."""
    if kind == "perovskite":  # ABO3, cubic, B at the centre
        symbols = formula.replace("O3", "")
        b_start = next(i for i in range(1, len(symbols)) if symbols[i].isupper())
        a_site, b_site = symbols[:b_start], symbols[b_start:]
        return Atoms(
            f"{a_site}{b_site}O3",
            scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
            cell=[a, a, a],
            pbc=True,
        )
    if kind == "L12":  # A3B, B at the cube corner
        minority = formula[formula.index("3") + 1 :]
        majority = formula[: formula.index("3")]
        return Atoms(
            f"{minority}{majority}3",
            scaled_positions=[(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
            cell=[a, a, a],
            pbc=True,
        )
    if kind in ("fcc", "bcc", "diamond"):
        return bulk(formula, kind, a=a, cubic=True)
    if kind in ("hcp", "wurtzite"):
        return bulk(formula, kind, a=a, c=c)
    return bulk(formula, kind, a=a)


def strain_and_rattle(
    atoms: Atoms, rng: np.random.Generator, stretch: np.ndarray, shear: float, rattle: tuple[float, float]
) -> None:
    """Deform ``atoms`` in place by the symmetric strain with diagonal ``stretch`` and off-diagonal terms drawn
    in [−shear, +shear] (atoms follow the cell), then displace every atom by a normal deviate whose scale (Å) is
    drawn in ``rattle``."""
    deformation = np.diag(stretch)
    off = rng.uniform(-shear, shear, size=3)
    deformation[0, 1] = deformation[1, 0] = off[0]
    deformation[0, 2] = deformation[2, 0] = off[1]
    deformation[1, 2] = deformation[2, 1] = off[2]
    atoms.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
    atoms.positions += rng.normal(scale=rng.uniform(*rattle), size=atoms.positions.shape)


def mixed_crystals(
    n: int = 24, seed: int = 0, strain: float = 0.05, shear: float = 0.02, rattle: tuple[float, float] = (0.03, 0.08)
) -> list[Atoms]:
    """``n`` strained, rattled crystals cycling through :data:`PROTOTYPES` (2–20 atoms each).

    Every third structure is a 2×1×1 (or 1×1×2) supercell so sizes vary; strain is drawn uniformly in
    [−strain, +strain], each off-diagonal shear in [−shear, +shear], the rattle amplitude in ``rattle`` (Å).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        formula, kind, a, c = PROTOTYPES[i % len(PROTOTYPES)]
        atoms = prototype(formula, kind, a, c)
        if i % 3 == 2:
            atoms = atoms * ((2, 1, 1) if i % 2 else (1, 1, 2))
        stretch = np.full(3, 1.0 + rng.uniform(-strain, strain))
        strain_and_rattle(atoms, rng, stretch, shear, rattle)
        atoms.info["name"] = f"{formula}-{kind}-{i}"
        out.append(atoms)
    return out
