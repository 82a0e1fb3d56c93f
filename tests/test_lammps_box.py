"""Variable-cell minimization in LAMMPS (fix box/relax with the atomopt min styles) against native cg."""

import numpy as np
import pytest

from atomopt.frontends.lammps.box import COMPONENTS, BoxRelax, BoxRelaxError, stress_tensor
from atomopt.frontends.lammps.driver import current_box

try:
    from atomopt.lammps import import_lammps, minimize

    lammps = import_lammps()
except ImportError as error:  # pragma: no cover - the test extra installs lammps
    pytest.skip(f"LAMMPS not available: {error}", allow_module_level=True)

from lammps_mpi_box_case import COPPER, STRAIN, TRICLINIC  # noqa: E402
from test_lammps import MPIRUN, OUT, on_one_and_two_ranks, positions_by_id, run_input  # noqa: E402


def copper(mode: str):
    """256 Cu atoms (EAM) at a = 3.70 Å (relaxed 3.615), rattled; aniso: strained, tri: strained and sheared."""
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(
        COPPER.format(
            region=TRICLINIC if mode == "tri" else "block 0 4 0 4 0 4", strain="" if mode == "iso" else STRAIN
        )
    )
    return lmp


def box_of(lmp):
    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    return np.array([hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2], xy, xz, yz])


def native_cg(mode: str, args: str):
    lmp = copper(mode)
    lmp.commands_string(f"fix relax all box/relax {args}\nmin_style cg\nminimize 0.0 1e-10 10000 100000")
    return box_of(lmp), lmp.get_thermo("pe")


@pytest.mark.parametrize("mode", ["iso", "aniso", "tri"])
def test_box_relaxation_reaches_native_cg_box_and_energy(mode):
    args = f"{mode} 0.0 vmax 0.001"
    reference_box, reference_energy = native_cg(mode, args)
    assert reference_box[:3] / 4 == pytest.approx(3.615, abs=1e-3)  # relaxed fcc Cu (Cu_u3.eam)
    names = ["safelbfgs", "safelbfgs+bond", "frankenstein"] + (["adan", "adamnx", "innaprop"] if mode == "iso" else [])
    for name in names:
        style, _, precon = name.partition("+")  # +bond: with the preconditioner, its box rows after the atoms
        lmp = copper(mode)
        lmp.command(f"fix relax all box/relax {args}")
        result = minimize(lmp, style, ftol=1e-8, maxiter=3000, box_relax=args, precon=precon or None)
        assert result.stop_reason == "force tolerance", name
        np.testing.assert_allclose(box_of(lmp) / 4, reference_box / 4, rtol=0, atol=1e-4, err_msg=name)
        assert lmp.get_thermo("pe") == pytest.approx(reference_energy, rel=1e-6), name
        assert np.abs(result.pressure_final).max() < 1.0  # bar
        assert "box/relax" in [
            line.split("style =")[1].split(",")[0].strip() for line in _info_fixes(lmp)
        ]  # the user's fix is back


def test_sorting_under_box_relax_keeps_each_atom_its_history():
    """One rank holds the state of the atoms and of the box rows together between steps; LAMMPS sorting its atoms
    at every step reorders the atoms' rows (SafeLBFGS's 100-pair histories included) and leaves the box rows last:
    the same minimization up to the order the forces are summed in, and the kept state has one row per atom."""
    args = "aniso 0.0 vmax 0.001"
    runs = []
    for sort in ("0 0.0", "1 1.0"):
        lmp = copper("aniso")
        lmp.commands_list([f"atom_modify sort {sort}", "neighbor 0.0 bin", "neigh_modify every 1 delay 0 check no"])
        lmp.command(f"fix relax all box/relax {args}")
        result = minimize(lmp, "safelbfgs", ftol=0.0, maxiter=40, box_relax=args, keep_state=True)
        nlocal = lmp.extract_setting("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:nlocal])
        kept = lmp.numpy.extract_atom("d2_atomopt_last_step")[:nlocal][order].copy()
        runs.append((np.array(result.energies), box_of(lmp), kept))
    (energies, box, kept), (energies_sorted, box_sorted, kept_sorted) = runs
    assert kept.shape == (256, 3) and np.abs(kept).max() > 0
    np.testing.assert_allclose(energies_sorted, energies, rtol=1e-10)
    np.testing.assert_allclose(box_sorted, box, rtol=1e-9)
    np.testing.assert_allclose(kept_sorted, kept, rtol=1e-6, atol=1e-9 * np.abs(kept).max())


def _info_fixes(lmp):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fixes"
        lmp.command(f"info fixes out overwrite {path}")
        return [line for line in path.read_text().splitlines() if "style =" in line]


@pytest.mark.parametrize("args", ["tri 0.0", "aniso 5000.0"])
def test_box_gradient_matches_finite_differences_of_the_enthalpy(args):
    """∂(E + P·V)/∂q from the virial against central differences of LAMMPS energies at deformed boxes."""
    lmp = copper("tri")
    box = BoxRelax.parse(args)
    nktv2p = lmp.extract_global("nktv2p")
    scaled = box.scaled(nktv2p)
    lmp.commands_string("compute p all pressure NULL virial\nthermo_style custom step pe c_p[*]")
    start = current_box(lmp)
    _set_box(lmp, start)
    analytic = scaled.strain_gradient(start, stress_tensor(lmp.numpy.extract_compute("p", 0, 1), nktv2p))

    def enthalpy(strains):
        target = box.box_matrix(strains, start)
        _set_box(lmp, target)
        energy = lmp.get_thermo("pe") + scaled.mean_pressure() * abs(np.linalg.det(target))
        _set_box(lmp, start)
        return energy

    h = 1e-5
    for k, component in enumerate(COMPONENTS):
        if component not in box.targets:
            assert analytic[k] == 0.0
            continue
        step = np.zeros(6)
        step[k] = h
        numeric = (enthalpy(step) - enthalpy(-step)) / (2 * h)
        assert analytic[k] == pytest.approx(numeric, rel=1e-5, abs=1e-6), component
    assert np.abs(analytic).max() > 1.0  # eV: the strained, sheared box is far from its minimum
    # with the stress at its target, nothing drives the box
    targets = BoxRelax.parse("x 200.0 y -300.0 z 0.0 xy 50.0 yz 0 xz 0").scaled(nktv2p)
    assert np.abs(targets.strain_gradient(start, -targets.target_tensor())).max() < 1e-12


def _set_box(lmp, h):
    """The box set to ``h`` (lo at the origin), atoms remapped with it, energy and virial evaluated."""
    lmp.command(
        f"change_box all x final 0 {float(h[0, 0])!r} y final 0 {float(h[1, 1])!r} z final 0 {float(h[2, 2])!r} "
        f"xy final {float(h[1, 0])!r} xz final {float(h[2, 0])!r} yz final {float(h[2, 1])!r} remap units box"
    )
    lmp.command("run 0")


def test_parse_and_refuse():
    box = BoxRelax.parse("iso 1.0 vmax 0.002 dilate partial nreset 50")
    assert box.targets == {"x": 1.0, "y": 1.0, "z": 1.0} and box.couple == "xyz" and box.vmax == 0.002
    assert box.dilate == "partial" and box.iso
    tri = BoxRelax.parse("tri 0.0 scalexy no")
    assert set(tri.targets) == set(COMPONENTS) and not tri.scale_tilt["xy"]
    # coupled components share their mean; others not relaxed are zero
    assert BoxRelax.parse("aniso 0.0 couple xy").project(np.arange(6.0)).tolist() == [0.5, 0.5, 2.0, 0.0, 0.0, 0.0]
    # vmax bounds the largest component (the volume, for iso)
    assert BoxRelax.parse("aniso 0 vmax 0.01").limit(np.array([0.02, 0.0, -0.01, 0, 0, 0])).tolist() == [
        0.01,
        0.0,
        -0.005,
        0,
        0,
        0,
    ]
    assert BoxRelax.parse("iso 0 vmax 0.03").limit(np.full(6, 0.02))[0] == pytest.approx(0.01)
    for bad, message in [
        ("iso", "needs a value"),
        ("iso abc", "expects a number"),
        ("iso 0 fixedpoint 0 0", "three numbers"),
        ("iso 0 wiggle 1", "unknown keyword"),
        ("couple xyz", "no component"),
        ("x 0 y 1 couple xy", "equal target"),
        ("iso 0 vmax -1", "vmax"),
    ]:
        with pytest.raises(BoxRelaxError, match=message):
            BoxRelax.parse(bad)
    lmp = copper("iso")  # orthogonal box: its tilts cannot relax (LAMMPS refuses the fix itself too)
    with pytest.raises(ValueError, match="orthogonal"):
        minimize(lmp, "frankenstein", box_relax="tri 0.0")


def test_fixedpoint_stays_in_place_as_with_native_cg():
    args = "iso 0.0 vmax 0.001 fixedpoint 0 0 0"
    native = copper("iso")
    native.commands_string(f"fix relax all box/relax {args}\nmin_style cg\nminimize 0.0 1e-10 10000 100000")
    ours = copper("iso")
    minimize(ours, "frankenstein", ftol=1e-8, maxiter=3000, box_relax=args)
    for lmp in (native, ours):
        lo, hi = lmp.extract_box()[:2]
        np.testing.assert_allclose(lo, 0.0, atol=1e-9)
        np.testing.assert_allclose(np.array(hi) / 4, 3.615, atol=1e-4)
    a, b = positions_by_id(native), positions_by_id(ours)
    length = ours.extract_box()[1][0]
    difference = (b - a) - length * np.round((b - a) / length)  # the same atoms in the same place (up to wrapping)
    # up to a rigid translation of the atoms inside the box (a zero mode: no force drives it back), which a
    # per-coordinate adaptive step leaves behind and CG's force-parallel steps do not
    drift = difference.mean(axis=0)
    assert np.abs(drift).max() < 2e-3
    np.testing.assert_allclose(difference - drift, 0.0, atol=1e-5)


def test_input_runner_relaxes_the_box_with_an_unchanged_input(tmp_path):
    script = tmp_path / "in.box"
    script.write_text(
        "units metal\nlattice fcc 3.70\nregion b block 0 4 0 4 0 4\ncreate_box 1 b\ncreate_atoms 1 box\n"
        "mass 1 63.546\npair_style eam\npair_coeff * * Cu_u3.eam\n"
        "displace_atoms all random 0.05 0.05 0.05 4711 units box\n"
        "fix relax all box/relax iso 0.0 vmax 0.001\n"
        "min_style frankenstein\nminimize 0.0 1.0e-8 3000 10000\n"
        'print "lattice $(lx/4:%.8f) pressure $(pxx:%.6f) $(pyy:%.6f) $(pzz:%.6f)"\n'
        "min_style cg\nminimize 0.0 1.0e-10 100 1000\n"  # the fix is LAMMPS's again for its own minimizers
        'print "after cg $(lx/4:%.8f)"\n'
    )
    log = tmp_path / "log"
    done = run_input(script, "-log", str(log), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert float(text.split("lattice ")[-1].split()[0]) == pytest.approx(3.615, abs=1e-4)
    # thermo keywords between runs read the current virial (the driver's fix left no dangling pointer behind)
    pressures = [float(v) for v in text.split("lattice ")[-1].split("pressure ")[1].split()[:3]]
    assert max(abs(p) for p in pressures) < 1.0  # bar
    assert float(text.split("after cg ")[-1].split()[0]) == pytest.approx(3.615, abs=1e-4)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("name", ["frankenstein", "safelbfgs", "safelbfgs+bond"])
def test_box_relaxation_on_two_ranks_gives_the_one_rank_result(tmp_path, name):
    one, two = on_one_and_two_ranks(tmp_path, "lammps_mpi_box_case.py", OUT, name)
    assert one["stop"] == two["stop"] == "force tolerance"
    assert two["energy"] == pytest.approx(one["energy"], rel=1e-9)
    np.testing.assert_allclose(two["box"], one["box"], rtol=0, atol=1e-8)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("name", ["frankenstein", "safelbfgs", "safelbfgs+bond"])
def test_box_rows_on_a_rank_without_atoms_give_the_one_rank_result(tmp_path, name):
    one, two = on_one_and_two_ranks(tmp_path, "lammps_mpi_box_case.py", OUT, name, "slab")
    assert two["atoms_per_rank"][0] == 0 < two["atoms_per_rank"][1]  # rank 0: the box rows, no atom
    assert one["stop"] == two["stop"] == "force tolerance"
    assert two["iterations"] == one["iterations"]
    assert two["energy"] == pytest.approx(one["energy"], rel=1e-12)
    np.testing.assert_allclose(two["box"], one["box"], rtol=0, atol=1e-9)


LJ_2D = """
dimension 2
atom_modify map array
lattice hex 0.8442
region box block 0 10 0 6 -0.5 0.5
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
fix 2 all enforce2d
displace_atoms all random 0.05 0.05 0 5 units box
change_box all x scale 1.03 y scale 0.98 remap units box
thermo_modify norm no
"""


@pytest.mark.parametrize(
    "system, args",
    [
        (LJ_2D, "x 1.0 y 2.0"),  # deviatoric: strain energy and its forces
        (LJ_2D, "iso 0.5"),  # 2-d: the area is the volume
        (LJ_2D, "x 1.0 y 1.0 couple xy"),  # LAMMPS's iso style in 2-d
        ("tri", "tri 0.0"),
        ("tri", "x 1000 y -2000 z 500 xy 300"),
        ("tri", "iso 100.0"),
        ("tri", "x 0 y 0 z 1000 couple xy"),
    ],
)
def test_statistics_under_box_relax_are_lammps_own(tmp_path, system, args):
    """Energy and force two-norm with fix box/relax as LAMMPS defines them (pe + its P·ΔV and strain terms; the
    forces on its own degrees of freedom in the norm), on the same state as native cg's first line."""
    text = system if system != "tri" else COPPER.format(region=TRICLINIC, strain=STRAIN)
    log = tmp_path / "native.log"
    native = lammps.lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
    native.commands_string(text + f"fix relax all box/relax {args}\nmin_style cg\nminimize 0.0 0.0 0 10")
    native.close()
    stats = log.read_text()
    energy = float(stats.split("Energy initial, next-to-last, final =")[1].split()[0])
    two_norm = float(stats.split("Force two-norm initial, final =")[1].split()[0])
    ours = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    ours.commands_string(text)
    result = minimize(ours, "safelbfgs", ftol=0.0, maxiter=0, box_relax=args)
    # LAMMPS prints 15 (energy) and 8 (norm) significant digits
    assert result.energy_initial == pytest.approx(energy, rel=1e-13)
    assert result.force_two_norm_initial == pytest.approx(two_norm, rel=5e-8)


def test_a_2d_box_reaches_different_x_and_y_pressures_as_native_cg(tmp_path):
    """A 2-d box relaxed to x 1.0 and y 2.0 with nreset and line quadratic (what LAMMPS's in.min.box does), from an
    input written here: the final energy, pressures and box of native cg, stopped by the force tolerance."""
    script = tmp_path / "in.box2d"
    script.write_text(
        "variable s index cg\nvariable p index none\natom_style atomic\n"
        + LJ_2D
        + "fix 3 all box/relax x 1.0 y 2.0 nreset 50\nmin_style ${s}\nmin_modify line quadratic\n"
        + 'if "${s} != cg" then "min_modify precon ${p}"\n'
        + "minimize 0.0 1.0e-6 2000 20000\n"
        + 'print "final $(pe:%.12g) $(pxx:%.12g) $(pyy:%.12g) $(lx:%.12g) $(ly:%.12g)"\n'
    )
    final = {}
    for style, precon in (("cg", "none"), ("safelbfgs", "none"), ("safelbfgs", "bond")):  # bond: P in 2-d
        log = tmp_path / f"{style}-{precon}"
        done = run_input(script, "-var", "s", style, "-var", "p", precon, "-log", str(log), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        text = log.read_text()
        assert "Stopping criterion = force tolerance" in text, style
        final[style, precon] = np.array([float(v) for v in text.split("\nfinal ")[-1].split()[:5]])
    for precon in ("none", "bond"):
        energy, pxx, pyy, lx, ly = final["safelbfgs", precon]
        np.testing.assert_allclose([pxx, pyy], [1.0, 2.0], atol=1e-3)
        assert energy == pytest.approx(final["cg", "none"][0], rel=1e-8)
        np.testing.assert_allclose([lx, ly], final["cg", "none"][3:], rtol=1e-6)
