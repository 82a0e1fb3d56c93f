"""The WBM-like proxy set (made from a seed, shipped in data/) and the loader for Matbench Discovery's files."""

import csv
import zipfile

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from atomopt.bench.wbm_proxy import DEFAULT_PROXY, load_proxy, load_wbm, parents, too_close, wbm_proxy


def test_shipped_proxy_is_the_seeded_set():
    shipped, made = load_proxy(), wbm_proxy(160, 2026)
    assert len(shipped) == 160
    for a, b in zip(shipped, made):
        assert a.info["material_id"] == b.info["material_id"] and a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        np.testing.assert_allclose(a.cell[:], b.cell[:], atol=1e-6)


def test_proxy_structures_are_wbm_like():
    structures = load_proxy()
    sizes = [len(a) for a in structures]
    assert min(sizes) >= 2 and max(sizes) <= 40 and sum(s >= 10 for s in sizes) >= 30
    assert not any(too_close(a) for a in structures)
    names = {a.info["parent"] for a in structures}
    assert {"CdI2-layered", "MoS2-2H", "ReO3-open", "spinel"} <= names  # hard cases are in
    # substitution keeps the parent's cell: volumes per atom spread far beyond the ±10 % strain alone
    ideal = dict(parents())
    substituted = [
        a
        for a in structures
        if sorted(set(a.get_chemical_symbols())) != sorted(set(ideal[a.info["parent"]].get_chemical_symbols()))
    ]
    assert len(substituted) > 100
    assert len({a.info["material_id"] for a in structures}) == 160


def test_load_wbm_reads_matbench_files(tmp_path):
    frames = {"wbm-1-1": bulk("NaCl", "rocksalt", a=5.6), "wbm-1-2": bulk("Cu", "fcc", a=3.6) * (2, 1, 1)}
    archive = tmp_path / "wbm-initial-atoms.extxyz.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for key, atoms in frames.items():
            path = tmp_path / f"{key}.extxyz"
            write(path, atoms, format="extxyz")
            zf.write(path, f"{key}.extxyz")
    summary = tmp_path / "wbm-summary.csv"
    with open(summary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "formula", "n_sites", "volume", "uncorrected_energy"])
        writer.writerow(["wbm-1-1", "NaCl", 2, 44.0, -6.8])
        writer.writerow(["wbm-1-2", "Cu2", 2, 23.0, -7.4])
    loaded = load_wbm(archive, summary)
    assert [a.info["material_id"] for a in loaded] == ["wbm-1-1", "wbm-1-2"]
    assert [a.info["dft_energy_per_atom"] for a in loaded] == [-3.4, -3.7]
    assert len(loaded[1]) == 2 and len(load_wbm(archive, n=1)) == 1
    with pytest.raises(FileNotFoundError, match="wbm-initial-atoms"):
        load_wbm(tmp_path / "missing.zip")
    bad = tmp_path / "bad.csv"
    bad.write_text("material_id,energy\nwbm-1-1,-1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_wbm(archive, bad)
    partial = tmp_path / "partial.csv"
    partial.write_text("material_id,n_sites,uncorrected_energy\nwbm-1-1,2,-6.8\n")
    with pytest.raises(ValueError, match="wbm-1-2 is not in the WBM summary"):
        load_wbm(archive, partial)
    assert DEFAULT_PROXY.name == "wbm_proxy.extxyz"
