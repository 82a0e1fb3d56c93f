"""LAMMPS's "Minimization stats": the one writer (for the atomopt styles) and the one reader (of any log)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atomopt.frontends.lammps.driver import MinimizeResult


def stats_lines(optimizer: str, r: MinimizeResult, per_atom: bool = False) -> list[str]:
    """The minimization stats of an atomopt style in LAMMPS's layout, a line each (energies per atom when thermo
    output is normalized, as LAMMPS prints them; no line search: its alpha is 0). The last two lines are
    atomopt's own."""
    scale = 1.0 / r.atoms if per_atom and r.atoms else 1.0
    energies = (r.energy_initial * scale, r.energy_next_to_last * scale, r.energy_final * scale)
    lines = [
        f"Minimization stats (atomopt {optimizer}):",
        f"  Stopping criterion = {r.stop_reason}",
        "  Energy initial, next-to-last, final = ",
        "    " + " ".join(f"{e:18.15g}" for e in energies),
        f"  Force two-norm initial, final = {r.force_two_norm_initial:.8g} {r.force_two_norm_final:.8g}",
        f"  Force max component initial, final = {r.force_max_component_initial:.8g} {r.force_max_component_final:.8g}",
        f"  Final line search alpha, max atom move = 0 {r.max_move_final:.8g}",
        f"  Iterations, force evaluations = {r.iterations} {r.force_evaluations}",
        f"  Optimizer time, wall time = {r.optimizer_time:.4g} {r.wall_time:.4g} s",
        f"  Final lr, eps, FIRE restarts = {r.lr_final:.6g} {r.eps_final:.6g} {r.fire_restarts}",
        "",
    ]
    return lines


def parse_stats(log_text: str) -> dict[str, Any]:
    """What the last "Minimization stats" block of a LAMMPS log says, native or atomopt's: stopping criterion
    (``stop``), ``energies`` (initial, next-to-last, final), ``iterations``, ``force_evaluations``, and for the
    atomopt styles ``lr_final``, ``eps_final``, ``fire_restarts``; from the lines before it the minimization's loop
    time (``loop_seconds``) and memory per MPI rank (``memory_mb_per_rank``, the largest rank's)."""
    before, _, stats = log_text.rpartition("Minimization stats")
    out: dict[str, Any] = {}
    for line in reversed(before.splitlines()):
        if line.startswith("Loop time of") and "loop_seconds" not in out:
            out["loop_seconds"] = float(line.split()[3])
        elif line.startswith("Per MPI rank memory allocation"):
            out["memory_mb_per_rank"] = float(line.split("=")[1].split("|")[2].split()[0])
            break

    def after(label: str) -> list[str] | None:
        return stats.split(label)[1].split() if label in stats else None

    if "Stopping criterion =" in stats:
        out["stop"] = stats.split("Stopping criterion =")[1].splitlines()[0].strip()
    energies = after("Energy initial, next-to-last, final =")
    if energies:
        out["energies"] = tuple(float(e) for e in energies[:3])
    counts = after("Iterations, force evaluations =")
    if counts:
        out["iterations"], out["force_evaluations"] = int(counts[0]), int(counts[1])
    gains = after("Final lr, eps, FIRE restarts =")
    if gains:  # atomopt's styles: what the step controls did
        out |= {"lr_final": float(gains[0]), "eps_final": float(gains[1]), "fire_restarts": int(gains[2])}
    return out
