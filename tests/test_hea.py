"""CoCrFeMnNi polycrystals for the HEA benchmark."""

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("mdapy")

from atomopt.bench.hea import HEA_ELEMENTS, box_for_atoms, polycrystal  # noqa: E402


def test_polycrystal_is_equiatomic_without_overlaps_and_reproducible():
    atoms = polycrystal(2000, grains=4, seed=3)
    assert 0.85 * 2000 <= len(atoms) <= 1.02 * 2000  # small grains: much boundary, more overlaps removed
    assert np.allclose(atoms.cell.cellpar(), [box_for_atoms(2000)] * 3 + [90] * 3)
    counts = Counter(atoms.get_chemical_symbols())
    assert set(counts) == set(HEA_ELEMENTS) and max(counts.values()) - min(counts.values()) <= 1
    assert len(set(atoms.arrays["grain"])) == 4
    from ase.neighborlist import neighbor_list

    assert neighbor_list("d", atoms, 2.0).size == 0  # boundary overlaps removed
    again = polycrystal(2000, grains=4, seed=3)
    assert again.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_array_equal(again.positions, atoms.positions)
    other = polycrystal(2000, grains=4, seed=4)
    assert len(other) != len(atoms) or not np.array_equal(other.positions, atoms.positions)
    with pytest.raises(ValueError, match="grain"):
        polycrystal(2000, grains=0)
