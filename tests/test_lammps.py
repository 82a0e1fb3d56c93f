"""LAMMPS front end: same trajectory as the ASE front end, LAMMPS stopping criteria, MPI, input runner."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomopt import OPTIMIZERS
from atomopt.bench import lj38
from atomopt.frontends.lammps.runner import ATOMOPT_STYLES
from atomopt.models.cluster_lj import ClusterLennardJones

try:
    from atomopt.frontends.lammps.library import find_mpirun
    from atomopt.lammps import UnsupportedFixError, import_lammps, minimize

    lammps = import_lammps()
except ImportError as error:  # pragma: no cover - the test extra installs lammps
    pytest.skip(f"LAMMPS not available: {error}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "lammps"


def lammps_instance():
    return lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])


def lj_cluster(lmp, positions):
    """Lennard-Jones ε = σ = 1 with a cutoff beyond the cluster: the same energy as ClusterLennardJones."""
    lmp.commands_string(
        """
        units lj
        atom_style atomic
        atom_modify map array
        boundary f f f
        region box block -20 30 -20 30 -20 30
        create_box 1 box
        mass 1 1.0
        pair_style lj/cut 40.0
        pair_coeff 1 1 1.0 1.0
        thermo_modify norm no
        """
    )
    lmp.commands_list([f"create_atoms 1 single {x:.17g} {y:.17g} {z:.17g} units box" for x, y, z in positions])


def cu_crystal(lmp, n=4, displacement=0.1, seed=99):
    lmp.commands_string(
        f"""
        units metal
        atom_modify map array
        lattice fcc 3.615
        region box block 0 {n} 0 {n} 0 {n}
        create_box 1 box
        create_atoms 1 box
        mass 1 63.546
        pair_style eam
        pair_coeff 1 1 Cu_u3.eam
        displace_atoms all random {displacement} {displacement} {displacement} {seed} units box
        """
    )


def positions_by_id(lmp):
    nlocal = lmp.extract_setting("nlocal")
    ids = lmp.numpy.extract_atom("id")[:nlocal]
    return lmp.numpy.extract_atom("x")[:nlocal][np.argsort(ids)].copy()


@pytest.mark.parametrize("name", sorted(ATOMOPT_STYLES))
def test_lammps_follows_the_ase_trajectory(name):
    start = lj38.load_starts(1)[0]
    atoms = start.copy()
    atoms.calc = ClusterLennardJones()
    options = {"precon": "none"} if name == "safelbfgs" else {}  # min_style safelbfgs has no preconditioner
    ase_energies = list(_ase_energies(OPTIMIZERS[name](atoms, logfile=None, **options), atoms, steps=20))
    lmp = lammps_instance()
    lj_cluster(lmp, start.positions)
    result = minimize(lmp, name, ftol=0.0, maxiter=20)
    assert result.stop_reason == "max iterations" and result.iterations == 20
    assert len(result.energies) == len(ase_energies) == 21
    np.testing.assert_allclose(result.energies, ase_energies, rtol=1e-8)
    np.testing.assert_allclose(positions_by_id(lmp), atoms.positions, atol=1e-8)


@pytest.mark.parametrize("precon", ["bond", "exp"])
def test_safelbfgs_with_the_preconditioner_follows_the_ase_trajectory(precon):
    """min_modify precon: P built over the gathered atoms in ID order, as the ASE front end builds it."""
    start = lj38.load_starts(1)[0]
    atoms = start.copy()
    atoms.calc = ClusterLennardJones()
    ase_energies = list(_ase_energies(OPTIMIZERS["safelbfgs"](atoms, logfile=None, precon=precon), atoms, steps=20))
    lmp = lammps_instance()
    lj_cluster(lmp, start.positions)
    lmp.command("atom_modify sort 1 1.0")  # sorted at every neighbour-list rebuild: the local order changes, P's not
    result = minimize(lmp, "safelbfgs", ftol=0.0, maxiter=20, precon=precon)
    np.testing.assert_allclose(result.energies, ase_energies, rtol=1e-8)
    np.testing.assert_allclose(positions_by_id(lmp), atoms.positions, atol=1e-8)
    lmp = lammps_instance()
    lj_cluster(lmp, start.positions)
    plain = minimize(lmp, "safelbfgs", ftol=0.0, maxiter=20)
    assert abs(plain.energies[-1] - result.energies[-1]) > 1e-3  # P changed the path


def test_precon_refuses_units_whose_lengths_its_neighbour_search_cannot_take():
    lmp = lammps_instance()
    lmp.commands_string(
        """
        units si
        region box block 0 1e-9 0 1e-9 0 1e-9
        create_box 1 box
        create_atoms 1 single 2e-10 2e-10 2e-10
        create_atoms 1 single 5e-10 2e-10 2e-10
        mass 1 1e-26
        pair_style zero 1e-9
        pair_coeff * *
        """
    )
    with pytest.raises(ValueError, match="not units si"):
        minimize(lmp, "safelbfgs", precon="bond", maxiter=5)


def test_min_modify_precon_reaches_the_minimization(tmp_path):
    """min_modify precon and precon_tolerance in an input give what the Python call with them gives: on 864 atoms,
    above the 512 rows that a dense factor of P solves exactly, so the tolerance of the conjugate gradients counts
    (the final energy differs from the default tolerance's)."""
    crystal = [
        "units lj", "atom_style atomic", "atom_modify map array", "lattice fcc 0.8442", "region box block 0 6 0 6 0 6",
        "create_box 1 box", "create_atoms 1 box", "mass 1 1.0", "pair_style lj/cut 2.5", "pair_coeff 1 1 1.0 1.0",
        "displace_atoms all random 0.05 0.05 0.05 4321", "thermo_modify norm no",
    ]  # fmt: skip

    def final_energy(precon_tolerance):
        lmp = lammps_instance()
        lmp.commands_list(crystal)
        return minimize(lmp, "safelbfgs", maxiter=6, precon="bond", precon_tolerance=precon_tolerance)

    expected = final_energy(1e-2)
    assert final_energy(1e-10).energy_final != pytest.approx(expected.energy_final, rel=1e-12, abs=0)
    lines = [*crystal, "min_style safelbfgs", "min_modify precon bond precon_tolerance 0.01", "minimize 0.0 0.0 6 1000"]
    script = tmp_path / "in.precon"
    script.write_text("\n".join(lines) + "\n")
    log = tmp_path / "log"
    done = run_input(script, "-log", str(log), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert f"Iterations, force evaluations = {expected.iterations} {expected.force_evaluations}" in text
    assert f"{expected.energy_final:.15g}"[:12] in text.split("Energy initial, next-to-last, final =")[1]


def _ase_energies(optimizer, atoms, steps):
    for _ in optimizer.irun(fmax=0.0, steps=steps):
        yield atoms.get_potential_energy()


def test_stopping_criteria_follow_lammps():
    lmp = lammps_instance()
    cu_crystal(lmp)
    r = minimize(lmp, "frankenstein", ftol=0.0, maxiter=7)
    assert (r.stop_reason, r.iterations, r.force_evaluations) == ("max iterations", 7, 8)
    r = minimize(lmp, "frankenstein", ftol=0.0, maxiter=100, maxeval=5)
    assert (r.stop_reason, r.force_evaluations) == ("max force evaluations", 5)
    r = minimize(lmp, "frankenstein", ftol=1e-4, norm="inf", maxiter=2000)
    assert r.stop_reason == "force tolerance" and r.force_max_component_final < 1e-4
    lmp.command("run 0")  # positions are left minimized for the commands that follow
    fmax = np.abs(lmp.numpy.extract_atom("f")[: lmp.extract_setting("nlocal")]).max()
    assert fmax < 1e-4
    assert lmp.extract_compute("thermo_pe", 0, 0) == pytest.approx(r.energy_final, rel=1e-12)
    lmp2 = lammps_instance()
    cu_crystal(lmp2)
    r = minimize(lmp2, "adamnx", etol=1e-6, ftol=0.0, maxiter=2000)
    assert r.stop_reason == "energy tolerance"
    e, e_prev = r.energy_final, r.energy_next_to_last
    assert abs(e - e_prev) < 1e-6 * 0.5 * (abs(e) + abs(e_prev) + 1e-8)


def test_only_the_group_moves_and_fixes_apply():
    lmp = lammps_instance()
    cu_crystal(lmp)
    lmp.commands_string(
        """
        region low block INF INF INF INF INF 1.0
        group bottom region low
        group top subtract all bottom
        fix hold top setforce 0.0 0.0 NULL
        """
    )
    before = positions_by_id(lmp)
    low = before[:, 2] <= 3.615  # region units are lattice spacings
    minimize(lmp, "adan", group="bottom", ftol=1e-3, norm="max", maxiter=2000)
    after = positions_by_id(lmp)
    assert np.array_equal(after[~low], before[~low])  # outside the group: untouched
    assert np.abs(after[low] - before[low]).max() > 1e-3


def test_sorting_does_not_scramble_the_optimizer_state():
    energies = []
    for sort in ("0 0.0", "1 1.0"):
        lmp = lammps_instance()
        cu_crystal(lmp, displacement=0.3)
        lmp.commands_list([f"atom_modify sort {sort}", "neighbor 0.0 bin", "neigh_modify every 1 delay 0 check no"])
        energies.append(minimize(lmp, "innaprop", ftol=0.0, maxiter=60).energies)
    np.testing.assert_allclose(energies[0], energies[1], rtol=1e-10)


def test_kept_state_is_in_lammps_atom_order():
    """keep_state leaves the optimizer's per-atom state in LAMMPS's arrays, each row at its atom, also where LAMMPS
    sorts its atoms at every step (reneighbouring every step; one rank holds the state by atom ID between steps)."""
    kept = []
    for sort in ("0 0.0", "1 1.0"):
        lmp = lammps_instance()
        cu_crystal(lmp, displacement=0.3)
        lmp.commands_list([f"atom_modify sort {sort}", "neighbor 0.0 bin", "neigh_modify every 1 delay 0 check no"])
        minimize(lmp, "frankenstein", ftol=0.0, maxiter=20, keep_state=True)
        nlocal = lmp.extract_setting("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:nlocal])
        kept.append({name: lmp.numpy.extract_atom(f"d2_atomopt_{name}")[:nlocal][order].copy() for name in ("m", "v")})
    for name in ("m", "v"):
        assert np.abs(kept[0][name]).max() > 0
        # a different neighbour order sums the forces in another order: last-bit differences, no more
        np.testing.assert_allclose(kept[1][name], kept[0][name], rtol=1e-9, atol=1e-12 * np.abs(kept[0][name]).max())


def test_clear_errors():
    lmp = lammps_instance()
    cu_crystal(lmp)
    with pytest.raises(ValueError, match="group"):
        minimize(lmp, "adan", group="nonexistent")
    with pytest.raises(ValueError, match="norm"):
        minimize(lmp, "adan", norm="three")
    lmp.command("fix relax all box/relax iso 0.0")
    with pytest.raises(UnsupportedFixError, match="box/relax"):
        minimize(lmp, "adan")
    lmp.command("unfix relax")
    lmp.command("fix md all nve")
    with pytest.raises(UnsupportedFixError, match="nve"):
        minimize(lmp, "adan")
    lmp.command("unfix md")
    assert minimize(lmp, "adan", maxiter=3, ftol=0.0).iterations == 3  # still usable afterwards
    empty = lammps_instance()
    empty.commands_string(
        "region box block 0 1 0 1 0 1\ncreate_box 1 box\nmass 1 1.0\npair_style zero 1.0\npair_coeff * *"
    )
    with pytest.raises(ValueError, match="no atoms"):
        minimize(empty, "adan")


def test_non_finite_forces_raise_and_leave_atoms_in_place():
    lmp = lammps_instance()
    cu_crystal(lmp)
    before = positions_by_id(lmp)
    lmp.command("variable huge equal 1.0e308*10.0")  # overflows to inf
    lmp.command("fix bad all addforce v_huge 0.0 0.0")
    with pytest.raises(FloatingPointError, match="non-finite"):
        minimize(lmp, "frankenstein")
    assert np.array_equal(positions_by_id(lmp), before)
    lmp.command("unfix bad")
    assert minimize(lmp, "frankenstein", maxiter=2, ftol=0.0).iterations == 2


MPIRUN = find_mpirun()


#: Where :func:`on_one_and_two_ranks` puts the output file's path among a case's arguments.
OUT = "{out}"


def on_one_and_two_ranks(tmp_path, case: str, *args: str) -> tuple[dict, dict]:
    """The JSON results of ``tests/<case>`` run under 1 and under 2 MPI ranks with ``args`` (``OUT``: its output)."""
    results = []
    for ranks in (1, 2):
        out = tmp_path / f"np{ranks}.json"
        arguments = [str(out) if arg == OUT else arg for arg in args]
        cmd = [MPIRUN, "-np", str(ranks), sys.executable, str(ROOT / "tests" / case), *arguments]
        subprocess.run(cmd, check=True, timeout=300, capture_output=True)
        results.append(json.loads(out.read_text()))
    return results[0], results[1]


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize(
    "name, steps",
    # SafeLBFGS is near its minimum by step 80, where its steps (~1e-9 Å) come from differences of tiny
    # gradients and the ranks' summation order shows: compare its state while the steps are still large
    [("frankenstein", 80), ("adan", 80), ("safelbfgs", 12), ("safelbfgs+bond", 12)],
)
def test_two_mpi_ranks_give_the_one_rank_result(tmp_path, name, steps):
    one, two = on_one_and_two_ranks(tmp_path, "lammps_mpi_case.py", name, OUT, str(steps))
    assert one["stop"] == two["stop"] == "force tolerance"
    assert two["migrated"] > 0  # atoms changed rank during the minimization
    assert two["energy"] == pytest.approx(one["energy"], rel=1e-9)
    # the per-atom state travelled with its atoms: the same vector under every atom ID
    assert one["last_step"].keys() == two["last_step"].keys()
    a = np.array([one["last_step"][k] for k in one["last_step"]])
    b = np.array([two["last_step"][k] for k in one["last_step"]])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(a).max())
    assert np.abs(a).max() > 0


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("name", ["frankenstein", "safelbfgs", "safelbfgs+bond"])
def test_a_rank_without_atoms_gives_the_one_rank_result(tmp_path, name):
    """A rank that holds no atom (vacuum) takes part in every reduction with empty rows instead of failing and
    leaving the other ranks waiting."""
    one, two = on_one_and_two_ranks(tmp_path, "lammps_mpi_case.py", name, OUT, "12", "one-side")
    assert two["ranks_with_atoms"] == 1
    assert one["stop"] == two["stop"] == "force tolerance"
    assert two["iterations"] == one["iterations"]
    assert two["energy"] == pytest.approx(one["energy"], rel=1e-12)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
def test_an_error_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    """The other ranks wait in a reduction the failing rank never reaches: the run must end, not hang."""
    case = str(ROOT / "tests" / "lammps_mpi_case.py")
    cmd = [MPIRUN, "-np", "2", sys.executable, case, "frankenstein", str(tmp_path / "out.json"), "12", "fail-on-rank-1"]
    done = subprocess.run(cmd, timeout=120, capture_output=True, text=True)
    assert done.returncode != 0
    assert "ERROR on rank 1 (atomopt): RuntimeError: a failure on rank 1 only" in done.stderr + done.stdout


def run_input(path, *args, cwd):
    """``atomopt lammps -in path`` in ``cwd`` (where LAMMPS writes log.lammps unless -log is given)."""
    cmd = [sys.executable, "-m", "atomopt.cli", "lammps", "-in", str(path), "-screen", "none", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_input_runner_runs_an_example_and_leaves_positions(tmp_path):
    log = tmp_path / "log.lammps"
    done = run_input(EXAMPLES / "in.cu_vacancy", "-var", "n", "4", "-log", str(log), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert "Minimization stats (atomopt adan):" in text
    assert "Stopping criterion = force tolerance" in text
    assert "info fixes" not in text and "fix atomopt_" not in text  # the driver's own commands stay out of the log
    formation = float(text.split("Vacancy formation energy:")[-1].split()[0])
    assert 1.0 < formation < 1.5  # Cu_u3: 1.28 eV (relaxed), computed after the minimization


def test_input_runner_mixes_native_and_atomopt_styles(tmp_path):
    script = tmp_path / "in.mixed"
    include = tmp_path / "in.system"
    include.write_text(
        "units metal\nlattice fcc 3.615\nregion box block 0 3 0 3 0 3\ncreate_box 1 box\ncreate_atoms 1 box\n"
        "mass 1 63.546\npair_style eam\npair_coeff 1 1 Cu_u3.eam\n"
        "displace_atoms all random 0.1 0.1 0.1 5 units box\n"
    )
    script.write_text(
        f"include {include}\n"
        "min_style cg\n"
        "minimize 0.0 1.0e-2 & # a continued line\n"
        "   100 1000\n"
        "min_style frankenstein\n"
        "min_modify lr 0.02 norm max dmax 0.05 form appendix_b\n"
        "minimize 0.0 1.0e-5 ${steps} 10000\n"
        'print "final pe $(pe:%.10f)"\n'
    )
    log = tmp_path / "log"
    done = run_input(script, "-var", "steps", "3000", "-log", str(log), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert "Minimization stats:" in text  # the native CG minimization ran in LAMMPS
    assert "Minimization stats (atomopt frankenstein):" in text
    assert "Stopping criterion = force tolerance" in text.split("atomopt frankenstein")[-1]


def test_input_runner_rejects_what_it_cannot_do(tmp_path):
    script = tmp_path / "in.loop"
    script.write_text("label top\njump SELF top\n")
    done = run_input(script, cwd=tmp_path)
    assert done.returncode == 2 and "jump" in done.stderr
    missing = run_input(tmp_path / "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr


MELT_2D = """# 2-d LJ melted briefly with fix nve and fix enforce2d left defined, then minimized with a nonzero etol
variable s index cg
dimension 2
atom_style atomic
atom_modify map array
neighbor 0.3 bin
neigh_modify delay 5
lattice hex 0.8442
region box block 0 10 0 5 -0.5 0.5
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create 5.0 87287 loop geom
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
fix 1 all nve
fix 2 all enforce2d
run 200
min_style ${s}
minimize 1.0e-4 1.0e-6 1000 10000
print "minimized pe $(pe:%.10f) x1 $(x[1]:%.10f)"
run 20
print "after md x1 $(x[1]:%.10f)"
"""


#: 108 Lennard-Jones atoms in a rattled fcc crystal (lj units).
RATTLED_LJ_CRYSTAL = (
    "units lj\nlattice fcc 1.0\nregion b block 0 3 0 3 0 3\ncreate_box 1 b\ncreate_atoms 1 box\nmass 1 1.0\n"
    "pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0\ndisplace_atoms all random 0.05 0.05 0.05 5 units box\n"
)


def _printed(text: str, label: str) -> float:
    return float(text.split(f"\n{label} ")[-1].split()[0])


def test_integrators_are_lifted_around_an_atomopt_minimization_and_restored(tmp_path):
    """As LAMMPS's minimizers ignore fix nve, an atomopt style runs with it defined and MD goes on afterwards."""
    script = tmp_path / "in.melt"
    script.write_text(MELT_2D)
    logs = {}
    for style in ("cg", "safelbfgs", "frankenstein"):
        done = run_input(script, "-var", "s", style, "-log", str(tmp_path / style), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        logs[style] = (tmp_path / style).read_text()
    for style in ("safelbfgs", "frankenstein"):
        text = logs[style]
        assert "atomopt: fix 1 (nve) does not act during minimization" in text
        assert "fix 2" not in text.split("atomopt:")[1]  # enforce2d acts in minimizations too: kept
        assert "Stopping criterion = energy tolerance" in text
        # as native cg: neighbour lists checked every step while minimizing
        assert "Switching to 'neigh_modify every 1 delay 0 check yes' setting during minimization" in logs["cg"]
        assert "Switching to 'neigh_modify every 1 delay 0 check yes' setting during minimization" in text
        minimized = text.split("\nminimized pe ")[-1].split()
        # etol over a five-step window: native's final energy per atom (lj units) or lower, not an early stop
        assert float(minimized[0]) <= _printed(logs["cg"], "minimized pe") + 1e-3, style
        assert _printed(text, "after md x1") != float(minimized[2])  # fix nve is back: the run moves the atoms
        # the log of the minimization carries LAMMPS's own timing breakdown and neighbour statistics, as native's
        ours = text.split("atomopt: fix 1")[1].split(f"Minimization stats (atomopt {style}):")[0]
        for block in (
            "Loop time of",
            "MPI task timing breakdown:",
            "Modify ",
            "Neighbor list builds =",
            "Ave neighs/atom",
        ):
            assert block in ours, (style, block)


def test_clear_resets_the_runner_to_native_cg_at_fixed_box(tmp_path):
    system = RATTLED_LJ_CRYSTAL
    script = tmp_path / "in.clear"
    script.write_text(
        system + "fix relax all box/relax iso 0.0\nmin_style safelbfgs\nmin_modify lr 0.1\nclear\n" + system
        + 'print "volume before $(vol:%.12f)"\nminimize 0.0 1.0e-6 1000 10000\nprint "volume after $(vol:%.12f)"\n'
    )  # fmt: skip
    done = run_input(script, "-log", str(tmp_path / "log"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "log").read_text()
    assert "Minimization stats:" in text and "atomopt" not in text.split("Minimization stats")[1][:40]  # native cg
    assert _printed(text, "volume after") == _printed(text, "volume before")  # no box relaxation left over


def test_a_minimize_reached_through_if_uses_the_atomopt_style_and_a_jump_there_is_refused(tmp_path):
    system = RATTLED_LJ_CRYSTAL + "variable n equal 2\nmin_style safelbfgs\n"
    script = tmp_path / "in.if"
    script.write_text(
        system + 'if "${n} > 3" then "print never" elif "${n} > 1" "print taken" "minimize 0.0 1e-4 100 1000" '
        'else "print never"\n'
    )
    done = run_input(script, "-log", str(tmp_path / "log"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "log").read_text()
    assert "\ntaken" in text and "\nnever" not in text
    assert "Minimization stats (atomopt safelbfgs)" in text
    script.write_text(system + 'label top\nif "${n} > 1" then "jump SELF top"\n')
    done = run_input(script, cwd=tmp_path)
    assert done.returncode == 2 and "jump" in done.stderr


def test_min_modify_fire_fields_refine_the_fire_control_and_are_refused_without_it():
    from atomopt.frontends.lammps.runner import InputError, optimizer_options

    options = optimizer_options(
        {
            "fire_f_dec": "0.5",
            "fire_n_min": "3",
            "fire_acts_on": "eps",
            "fire_measured_cut": "yes",
            "fire": "yes",
            "lr": "0.1",
        }
    )
    assert options == {"lr": 0.1, "fire": {"f_dec": 0.5, "n_min": 3, "acts_on": "eps", "measured_cut": True}}
    for raw, message in (
        ({"fire_f_dec": "0.5", "fire": "no"}, "is off"),
        ({"fire_n_min": "2.5"}, "whole number"),
        ({"fire_f_inc": "fast"}, "expects a number"),
        ({"memory": "2.5"}, "whole number"),
    ):
        with pytest.raises(InputError, match=message):
            optimizer_options(raw)


def test_min_modify_fire_fields_reach_the_minimizer(tmp_path):
    base = LOG_INPUT.format(units="lj", lattice=1.0, potential="pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0")
    iterations = {}
    for name, extra in (("default", ""), ("changed", " fire_f_inc 1.5 fire_n_min 1")):
        script = tmp_path / f"in.{name}"
        script.write_text(base.replace("min_modify norm max", "min_modify norm max" + extra))
        log = tmp_path / f"{name}.log"
        done = run_input(script, "-var", "s", "frankenstein", "-log", str(log), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        text = log.read_text()
        iterations[name] = int(text.split("Iterations, force evaluations =")[1].split()[0])
        lr, eps, restarts = text.split("Final lr, eps, FIRE restarts =")[1].split()[:3]
        # lr moves between cuts on uphill steps (×0.9 per restart) and growth up to 10× the start (0.05 Å)
        assert 0 < float(lr) <= 0.5 and float(eps) == 0.1 and 0 <= int(restarts) < iterations[name]
    assert iterations["changed"] != iterations["default"]  # a faster-growing lr: another path to fmax


def test_min_style_safelbfgs_runs_an_input_and_takes_its_memory_from_min_modify(tmp_path):
    from atomopt.frontends.lammps.runner import optimizer_options

    assert optimizer_options({"memory": "5", "initial_curvature": "20"}) == {"memory": 5, "initial_curvature": 20.0}
    base = LOG_INPUT.format(units="lj", lattice=1.0, potential="pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0")
    evaluations = {}
    for name, extra in (("default", ""), ("short", " memory 1")):
        script = tmp_path / f"in.{name}"
        script.write_text(base.replace("min_modify norm max", "min_modify norm max" + extra))
        log = tmp_path / f"{name}.log"
        done = run_input(script, "-var", "s", "safelbfgs", "-log", str(log), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        text = log.read_text()
        assert "Stopping criterion = force tolerance" in text
        evaluations[name] = int(text.split("Iterations, force evaluations =")[1].split()[1])
    assert evaluations["short"] != evaluations["default"]  # one pair of memory: another path to the minimum


def test_min_modify_rejects_unknown_values(tmp_path):
    script = tmp_path / "in.bad"
    script.write_text("units lj\nregion b block 0 2 0 2 0 2\ncreate_box 1 b\nmin_style adan\nmin_modify fire maybe\n")
    done = run_input(script, cwd=tmp_path)
    assert done.returncode == 2 and "fire" in done.stderr


def test_example_without_its_potential_files_stops_at_once_and_says_where_to_get_them(tmp_path):
    log = tmp_path / "log"
    # run from another folder: the example's include is found beside it
    done = run_input(
        EXAMPLES / "in.hea_meam_box", "-var", "potdir", str(tmp_path / "missing"), "-log", str(log), cwd=tmp_path
    )
    assert done.returncode == 1  # stopped by a LAMMPS error, after the message
    text = log.read_text()
    assert f"ERROR: MEAM files {tmp_path / 'missing'}/library.meam" in text and "ctcms.nist.gov/potentials" in text
    assert "create_atoms" not in text  # nothing was built before the check
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2 and "MEAM_potential_files_missing: see the ERROR line above" in errors[1]  # LAMMPS's stop
    assert "Cannot open file" not in text


LOG_INPUT = """variable s index cg
units {units}
lattice fcc {lattice}
region b block 0 3 0 3 0 3
create_box 1 b
create_atoms 1 box
mass 1 1.0
{potential}
displace_atoms all random 0.05 0.05 0.05 5 units box
thermo 7
min_style ${{s}}
min_modify norm max
minimize 0.0 1.0e-4 1000 10000
print "done"
"""


def _stats(text):
    """Label → values of the statistics block (the energies sit on the line after their label)."""
    block = text.split("Minimization stats")[1].split("\n\n")[0].splitlines()[1:]
    stats = {}
    for k, line in enumerate(block):
        if "=" in line:
            values = line.split("=")[1].split()
            stats[line.split("=")[0].strip()] = values or block[k + 1].split()
    return stats


@pytest.mark.parametrize("units", ["metal", "lj"])
def test_atomopt_log_reads_like_a_native_one(tmp_path, units):
    potential = (
        "pair_style eam\npair_coeff * * Cu_u3.eam"
        if units == "metal"
        else "pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0"
    )
    script = tmp_path / "in.log"
    script.write_text(LOG_INPUT.format(units=units, lattice=3.615 if units == "metal" else 1.0, potential=potential))
    logs = {}
    for style in ("cg", "frankenstein"):
        log = tmp_path / f"{style}.log"
        done = run_input(script, "-var", "s", style, "-log", str(log), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        logs[style] = log.read_text()
    native, ours = logs["cg"], logs["frankenstein"]
    # the same command echo: every input line as written, then its substituted form, and nothing else
    echo = [line for line in LOG_INPUT.splitlines() if line.startswith(("min_", "minimize", "print"))]
    for line in echo[1:]:
        assert line in ours
    assert "min_style ${s}\nmin_style frankenstein\nmin_modify norm max\nminimize 0.0 1.0e-4 1000 10000" in ours
    for internal in (
        "echo none",
        "run ",
        "fix atomopt",
        "variable atomopt",
        "Setting up Verlet",
        "No fixes with time integration",
        "info fixes",
    ):
        assert internal not in ours, internal
    # one thermo block per minimization, ending with the final step
    header = next(line for line in native.splitlines() if line.lstrip().startswith("Step"))
    assert ours.count(header) == native.count(header) == 1
    block = ours.split(header)[1].split("Loop time of")[0].strip().splitlines()
    iterations = int(ours.split("Iterations, force evaluations =")[1].split()[0])
    assert int(block[-1].split()[0]) == iterations
    # the same statistics lines in the same order (atomopt adds its own timing line last)
    native_stats, our_stats = _stats(native), _stats(ours)
    assert list(native_stats) == list(our_stats)[: len(native_stats)]
    # energies normalized as thermo_modify norm says (per atom in lj units, totals in metal)
    final_thermo = float(block[-1].split()[2])
    assert float(our_stats["Energy initial, next-to-last, final"][2]) == pytest.approx(final_thermo, rel=1e-5)
    for stats in (native_stats, our_stats):  # 108 atoms: per atom a few ε in lj units, totals of −382 eV in metal
        energy = abs(float(stats["Energy initial, next-to-last, final"][2]))
        assert energy < 10 if units == "lj" else energy > 300


def test_an_atomopt_error_is_the_last_line_of_the_log_and_on_the_screen(tmp_path):
    script = tmp_path / "in.error"
    script.write_text(
        "units metal\nlattice fcc 3.615\nregion b block 0 2 0 2 0 2\ncreate_box 1 b\ncreate_atoms 1 box\n"
        "mass 1 63.5\npair_style eam\npair_coeff * * Cu_u3.eam\n"
        "min_style safelbfgs\nmin_modify memory 0\nminimize 0.0 1.0e-4 100 1000\n"
    )
    log = tmp_path / "log"
    cmd = [sys.executable, "-m", "atomopt.cli", "lammps", "-in", str(script), "-log", str(log)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and "memory must be a whole number" in last
    assert done.stdout.strip().splitlines()[-1] == last  # the same text on the screen


@pytest.mark.parametrize(
    "line, message",
    [
        ("min_modify lrr 0.1", "unknown keyword 'lrr'.*atomopt keywords: lr, eps.*LAMMPS keywords: dmax"),
        ("min_modify lr abc", "min_modify lr expects a number, got 'abc'"),
        ("min_modify norm three", "norm must be one of two, max, inf"),
        ("min_modify precon dense", "precon must be one of auto, bond, exp, none"),
        ("min_modify precon bond\nminimize 0.0 1e-4 10 10", "only safelbfgs takes a preconditioner"),
        ("min_modify precon_tolerance 0.01\nminimize 0.0 1e-4 10 10", "only safelbfgs takes a preconditioner"),
        ("min_style safelbfgs\nmin_modify precon_tolerance 0.01\nminimize 0.0 1e-4 10 10", "set precon too"),
    ],
)
def test_min_modify_errors_name_the_keyword(tmp_path, line, message):
    script = tmp_path / "in.bad"
    script.write_text(f"units lj\nregion b block 0 2 0 2 0 2\ncreate_box 1 b\nmin_style frankenstein\n{line}\n")
    log = tmp_path / "log"
    done = run_input(script, "-log", str(log), cwd=tmp_path)
    assert done.returncode == 2
    import re

    assert re.search(message, log.read_text().strip().splitlines()[-1]), log.read_text()[-500:]


NATIVE_STATS = """Loop time of 0.0123 on 1 procs for 31 steps with 500 atoms

Minimization stats:
  Stopping criterion = energy tolerance
  Energy initial, next-to-last, final =
     -6.76216777853    -6.79046530339    -6.79046531432
  Search direction = steepest
  Iterations, force evaluations = 31 58
"""


def test_minimization_stats_are_written_and_read_by_one_pair():
    from atomopt.frontends.lammps.driver import MinimizeResult
    from atomopt.frontends.lammps.stats import parse_stats, stats_lines

    result = MinimizeResult(
        "force tolerance",
        12,
        13,
        -3.0,
        -3.5,
        -3.5000001,
        2.0,
        1e-5,
        1.0,
        5e-6,
        0.2,
        0.01,
        lr_final=0.0425,
        eps_final=0.1,
        fire_restarts=3,
        atoms=2,
    )
    read = parse_stats("Loop time of 0.2 on 1 procs\n" + "\n".join(stats_lines("frankenstein", result)))
    assert read == {
        "loop_seconds": 0.2,
        "stop": "force tolerance",
        "energies": (-3.0, -3.5, -3.5000001),
        "iterations": 12,
        "force_evaluations": 13,
        "lr_final": 0.0425,
        "eps_final": 0.1,
        "fire_restarts": 3,
    }
    per_atom = parse_stats("\n".join(stats_lines("frankenstein", result, per_atom=True)))
    assert per_atom["energies"] == (-1.5, -1.75, -1.75000005)
    native = parse_stats(NATIVE_STATS)
    assert native == {
        "loop_seconds": 0.0123,
        "stop": "energy tolerance",
        "energies": (-6.76216777853, -6.79046530339, -6.79046531432),
        "iterations": 31,
        "force_evaluations": 58,
    }
