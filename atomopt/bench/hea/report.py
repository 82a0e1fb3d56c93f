"""HEA benchmark, the report: energy gaps, evaluations to within 1 and 0.1 meV/atom of the best, the targets, tables and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomopt.bench.hea.build import RUN_KEY, _polycrystal, polycrystal_of
from atomopt.bench.hea.dislocations import BURGERS_FAMILIES, DXA_CIRCUITS
from atomopt.bench.provenance import report_header


def evaluations_to_reach(evaluations: np.ndarray, energies: np.ndarray, level: float) -> int | None:
    """The first evaluation count after which the energy stays at or below ``level`` (``None``: never)."""
    below = energies <= level
    if not below.any() or not below[-1]:
        return None
    above = np.nonzero(~below)[0]
    first = 0 if len(above) == 0 else above[-1] + 1
    return int(evaluations[first])


#: Energy levels above the best for the "evaluations to reach" columns, eV/atom.
LEVELS = (1e-3, 1e-4)


def cost_per_atom_evaluation_rank(row: dict) -> float:
    """Seconds per atom per force evaluation per MPI rank of a run: the minimization's loop time (LAMMPS's own,
    without start-up and reading the data) times the ranks, over atoms and force evaluations; the wall time
    where a log has no loop time."""
    seconds = row.get("loop_seconds", row["wall_seconds"])
    return seconds * row["ranks"] / (row["natoms"] * max(row.get("force_evaluations") or 1, 1))


def summarize(rows: list[dict]) -> list[dict]:
    """Per polycrystal (grain count and seed) and box mode: each method's gap to the best final energy and the
    evaluations it needed to come within each of :data:`LEVELS` of that best."""
    table = []
    for grains, box, seed in sorted({polycrystal_of(r) for r in rows}):
        group = [r for r in rows if polycrystal_of(r) == (grains, box, seed) and r.get("status") == "ok"]
        if not group:
            continue
        best = min(r["energy"] for r in group)
        for r in group:
            n = r["natoms"]
            evaluations, energies = (np.asarray(v) for v in r["curve"])
            entry = {
                "grains": grains,
                "box": box,
                "seed": seed,
                "method": r["method"],
                "natoms": n,
                "energy": r["energy"],
                "gap_ev": r["energy"] - best,
                "gap_mev_per_atom": 1000 * (r["energy"] - best) / n,
                "force_evaluations": r.get("force_evaluations"),
                "stop": r.get("stop"),
                "fnorm_final": r["fnorm_final"],
                "pressure_bar": r["pressure_bar"],
                "wall_seconds": r["wall_seconds"],
                "ranks": r["ranks"],
                **{k: r[k] for k in ("lr_final", "eps_final", "fire_restarts") if k in r},
                "seconds_per_atom_evaluation_rank": cost_per_atom_evaluation_rank(r),
            }
            for level in LEVELS:
                entry[f"evaluations_to_{level * 1000:g}_mev"] = evaluations_to_reach(
                    evaluations, energies, best + level * n
                )
            if "dxa" in r:
                entry.update(
                    dislocation_segments=r["dxa"]["segments"],
                    dislocation_length=r["dxa"]["total_length"],
                    dislocation_families=r["dxa"]["length_by_family"],
                    dislocation_segments_by_family=r["dxa"].get("segments_by_family"),
                    dislocation_length_by_circuit={
                        c: v["total_length"] for c, v in r["dxa"].get("by_circuit", {}).items()
                    },
                )
            table.append(entry)
    return table


def competes_with(method: str, other: str) -> bool:
    """Whether ``other`` is one of the methods that ``method`` (a tested method or a variant of one) is checked
    against: neither a variant nor the same method under other settings."""
    return "@" not in other and other != method.partition("@")[0]


#: The tested methods and the rivals each must come within 1 meV/atom of the best sooner than: the paper's claim
#: for Frankenstein (FIRE and CG, and CG as a user would retune it for the box), SafeLBFGS's target (those and
#: Frankenstein).
TARGET_RIVALS = {
    "frankenstein": ("fire", "cg", "cg-vmax0.01", "cg-forcezero"),
    "safelbfgs": ("fire", "cg", "cg-vmax0.01", "cg-forcezero", "frankenstein"),
}


def targets(
    table: list[dict], method: str = "frankenstein", rivals: Sequence[str] = TARGET_RIVALS["frankenstein"]
) -> list[dict]:
    """The issue's three targets per polycrystal and box mode, from :func:`summarize`'s table: ``method``'s final
    energy is the lowest of all; it comes within 1 meV/atom of the best in fewer evaluations than each of
    ``rivals`` that ran (never = infinitely many); its DXA line length is no larger than theirs, at every trial
    circuit length analysed (``None`` where there is no DXA, or nothing to compare with).

    ``method`` may be a variant (``frankenstein@...``); "all" methods are the other methods: neither
    variants nor the same method under other settings (a variant stands in for the default, it does not compete
    with it)."""
    checks = []
    for grains, box, seed in dict.fromkeys(polycrystal_of(r) for r in table):
        group = {r["method"]: r for r in table if polycrystal_of(r) == (grains, box, seed)}
        if method not in group:
            continue
        ours = group[method]
        others = [group[m] for m in rivals if m in group]
        competing = [m for m in group if competes_with(method, m)]
        best_other = min((group[m] for m in competing), key=lambda r: r["energy"], default=None)

        def evaluations(r: dict) -> float:
            return r["evaluations_to_1_mev"] if r["evaluations_to_1_mev"] is not None else math.inf

        lengths = ours.get("dislocation_length_by_circuit") or {}
        dxa = None
        if lengths and others and all(r.get("dislocation_length_by_circuit") for r in others):
            dxa = all(lengths[c] <= r["dislocation_length_by_circuit"][c] for r in others for c in lengths)
        checks.append(
            {
                "method": method,
                "grains": grains,
                "box": box,
                "seed": seed,
                "methods": 1 + len(competing),
                "rivals": [r["method"] for r in others],
                "lowest": None if best_other is None else ours["energy"] <= best_other["energy"],
                "margin_ev": None if best_other is None else best_other["energy"] - ours["energy"],
                "runner_up": None if best_other is None else best_other["method"],
                "faster_to_1_mev": all(evaluations(ours) < evaluations(r) for r in others) if others else None,
                "dxa_no_longer": dxa,
            }
        )
    return checks


def targets_over_seeds(checks: list[dict]) -> list[dict]:
    """:func:`targets` counted over the seeds, per method (the default and each variant), grain count and box
    mode: of the seeds with a verdict, how many met each target, and the mean margin of the lowest-energy target
    (eV; positive: below the runner-up)."""
    summary = []
    for method, grains, box in dict.fromkeys((c["method"], c["grains"], c["box"]) for c in checks):
        group = [c for c in checks if (c["method"], c["grains"], c["box"]) == (method, grains, box)]
        entry = {"method": method, "grains": grains, "box": box, "seeds": [c["seed"] for c in group]}
        for target in ("lowest", "faster_to_1_mev", "dxa_no_longer"):
            verdicts = [c[target] for c in group if c[target] is not None]
            entry[target] = [sum(verdicts), len(verdicts)]
        margins = [c["margin_ev"] for c in group if c["margin_ev"] is not None]
        entry["mean_margin_ev"] = float(np.mean(margins)) if margins else None
        summary.append(entry)
    return summary


def memory_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Memory per rank as fixed MB + kB per atom on the rank, least squares over (atoms per rank, MB) points of
    different rank counts (ghost atoms count with their rank's atoms); one point: all of it per atom."""
    x, y = (np.array(v, dtype=float) for v in zip(*points))
    if len(set(x.tolist())) < 2:
        return 0.0, float(1000 * y[0] / x[0])
    slope = max(float(np.polyfit(x, y, 1)[0]), 0.0)
    return float(np.mean(y - slope * x)), 1000 * slope


def _machine_line(machine: dict, runs: str = "") -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    return f"{machine['platform']}, {machine['cpus']} CPUs{runs}; {versions}"


def cost_markdown(payload: dict) -> str:
    lines = [
        *report_header(
            f"Cost of the HEA minimizations: {payload['table'][0]['natoms']} atoms, {payload['grains']} grains, "
            f"{payload['budget']} force evaluations",
            payload["command"],
            _machine_line(payload["machine"]),
        ),
        "Cost: LAMMPS's loop time of the minimization × ranks / (atoms × force evaluations). Speedup and "
        "efficiency: time per evaluation against one rank. Memory: LAMMPS's largest rank.",
        "",
        "| method | ranks | evaluations | loop s | µs per atom-evaluation-rank | speedup | efficiency | MB per rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["table"]:
        lines.append(
            f"| {r['method']} | {r['ranks']} | {r['force_evaluations']} | {r['loop_seconds']:.1f} | "
            f"{r['cost'] * 1e6:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} | "
            f"{r['memory_mb_per_rank']:.1f} |"
        )
    lines += [
        "",
        f"## The paper's run: {payload['target_atoms']:,} atoms, {payload['target_evaluations']} force evaluations",
        "",
        f"At the cost and efficiency measured on {max(payload['ranks'])} rank(s) here (per-atom work scales "
        "linearly for a short-ranged potential; communication at few atoms per rank makes these lower "
        "bounds). Memory per rank: the fixed part plus the per-atom part fitted over the rank counts here.",
        "",
        "| method | ranks | atoms per rank | core-hours | wall hours | MB per rank |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["projection"]:
        lines.append(
            f"| {r['method']} | {r['ranks']} | {r['atoms_per_rank']:,.0f} | {r['core_hours']:.0f} | "
            f"{r['wall_hours']:.2f} | {r['memory_mb_per_rank']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(payload: dict) -> str:
    lines = [
        *report_header(
            f"CoCrFeMnNi polycrystals, 2NN MEAM: {payload['n_atoms']} atoms, grains {payload['grains']}, "
            f"{payload['budget']} force evaluations",
            payload["command"],
            _machine_line(payload["machine"], f", {payload['ranks']} MPI rank(s) per run"),
            between=[f"Runs made by: `{c}`  " for c in payload.get("run_commands", []) if c != payload["command"]],
        ),
        "Gap: final energy above the lowest any method reached on the same polycrystal and box mode. "
        "evals to 1 / 0.1 meV/atom: force evaluations after which the energy stays within that of the best "
        "(– never). DXA: OVITO dislocation analysis of the final structure (segments / total length Å).",
        "",
    ]
    if payload.get("not_run"):
        missing: dict[str, list[str]] = {}
        for key in payload["not_run"]:
            job = RUN_KEY.fullmatch(key)
            seed = f" seed {job['seed']}" if job["seed"] else ""
            missing.setdefault(f"{job['grains']} grains {job['box']}{seed}", []).append(job["method"])
        lines += [
            f"Partial results: {len(payload['not_run'])} runs not done yet (the gaps are to the best of the "
            "methods done): " + "; ".join(f"{group}: {', '.join(methods)}" for group, methods in missing.items()) + ".",
            "",
        ]
    checks = payload.get("targets") or []
    if checks:

        def mark(value: bool | None) -> str:
            return "–" if value is None else ("met" if value else "missed")

        lines += [
            "## Targets: Frankenstein (the paper's claim) and SafeLBFGS against every method and their rivals",
            "",
            "Lowest: its final energy is the lowest of the methods run (margin: runner-up's energy minus "
            "its own). Sooner: within 1 meV/atom of the best in fewer evaluations than each rival that ran "
            "(Frankenstein's: FIRE and CG, with CG's box-relax variants; SafeLBFGS's: those and Frankenstein). "
            "DXA: line length no larger than each rival's at every trial circuit length "
            f"({', '.join(map(str, DXA_CIRCUITS))}).",
            "",
            "| method | polycrystal | methods compared | rivals | lowest | margin eV (runner-up) | sooner to 1 meV/atom "
            "| DXA |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            margin = "–" if c["margin_ev"] is None else f"{c['margin_ev']:+.3f} ({c['runner_up']})"
            lines.append(
                f"| {c['method']} | {_polycrystal(c)} | {c['methods']} | {', '.join(c['rivals']) or '–'} | "
                f"{mark(c['lowest'])} | {margin} | {mark(c['faster_to_1_mev'])} | "
                f"{mark(c['dxa_no_longer'])} |"
            )
        lines.append("")
    over_seeds = [e for e in payload.get("targets_over_seeds") or [] if len(e["seeds"]) > 1]
    if over_seeds:
        lines += [
            "### Over the seeds (polycrystals of the same grain count): targets met / seeds with a verdict",
            "",
            "| method | polycrystals | seeds | lowest | mean margin eV | sooner to 1 meV/atom | DXA |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in over_seeds:
            lines.append(
                f"| {e['method']} | {_polycrystal(e)} | {len(e['seeds'])} | "
                f"{e['lowest'][0]} / {e['lowest'][1]} | "
                + ("–" if e["mean_margin_ev"] is None else f"{e['mean_margin_ev']:+.2f}")
                + f" | {e['faster_to_1_mev'][0]} / {e['faster_to_1_mev'][1]} | "
                f"{e['dxa_no_longer'][0]} / {e['dxa_no_longer'][1]} |"
            )
        lines.append("")
    others = [str(c) for c in DXA_CIRCUITS[1:]]
    for polycrystal_key in dict.fromkeys(polycrystal_of(r) for r in payload["table"]):
        rows = sorted((r for r in payload["table"] if polycrystal_of(r) == polycrystal_key), key=lambda r: r["energy"])
        grains, box, seed = polycrystal_key
        lines += [
            f"## {grains} grains{f', seed {seed}' if seed else ''}, {rows[0]['natoms']} atoms, "
            f"{'box relaxed (iso 0)' if box else 'fixed box'}",
            "",
            "| method | final energy eV | gap eV | gap meV/atom | evals to 1 meV/atom | evals to 0.1 meV/atom | "
            "evaluations | stop | fnorm | pressure bar | DXA segments / length Å | "
            f"DXA length at circuit {' / '.join(others)} | final lr Å / restarts | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            dxa = f"{r['dislocation_segments']} / {r['dislocation_length']:.0f}" if "dislocation_segments" in r else "–"
            by_circuit = r.get("dislocation_length_by_circuit") or {}
            dxa_circuits = " / ".join(f"{by_circuit[c]:.0f}" for c in others) if by_circuit else "–"
            controls = f"{r['lr_final']:.3g} / {r['fire_restarts']}" if "fire_restarts" in r else "–"
            lines.append(
                f"| {r['method']} | {r['energy']:.3f} | {r['gap_ev']:.3f} | {r['gap_mev_per_atom']:.4f} | "
                f"{r['evaluations_to_1_mev'] or '–'} | {r['evaluations_to_0.1_mev'] or '–'} | "
                f"{r['force_evaluations']} | {r['stop']} | {r['fnorm_final']:.3g} | "
                f"{r['pressure_bar']:.1f} | {dxa} | {dxa_circuits} | {controls} | {r['wall_seconds']:.0f} |"
            )
        lines.append("")
        analysed = [r for r in rows if r.get("dislocation_segments_by_family")]
        if analysed:
            families = [
                f
                for f in [*BURGERS_FAMILIES, "other"]
                if any(r["dislocation_families"].get(f, 0) > 0 for r in analysed)
            ]
            lines += [
                f"DXA by Burgers-vector family (circuit {DXA_CIRCUITS[0]}), segments / length Å; lattice: all "
                "but other",
                "",
                "| method | " + " | ".join(families) + " | lattice |",
                "|---" * (len(families) + 2) + "|",
            ]
            for r in analysed:
                cells = [
                    f"{r['dislocation_segments_by_family'].get(f, 0)} / {r['dislocation_families'].get(f, 0):.0f}"
                    for f in families
                ]
                cells.append(
                    f"{sum(r['dislocation_segments_by_family'].get(f, 0) for f in BURGERS_FAMILIES)} / "
                    f"{sum(r['dislocation_families'].get(f, 0) for f in BURGERS_FAMILIES):.0f}"
                )
                lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(payload: dict, rows: list[dict], path: Path) -> None:
    """Energy gap by grain size per method (as the paper's Fig. 5) and energy against force evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["box"] for r in payload["table"]})
    methods = list(dict.fromkeys(r["method"] for r in payload["table"]))
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("tab20").colors[1::2]  # 20 colours, tab10's first
    color = {m: palette[i % len(palette)] for i, m in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, 2 * len(modes), figsize=(7 * len(modes) * 2 / 2, 4.5), squeeze=False)
    for k, box in enumerate(modes):
        ax = axes[0, 2 * k]
        for method in methods:
            gaps: dict[int, list[float]] = {}  # over the seeds: the mean gap
            for r in payload["table"]:
                if r["method"] == method and r["box"] == box:
                    gaps.setdefault(r["grains"], []).append(r["gap_mev_per_atom"])
            pts = sorted((g, max(float(np.mean(v)), 1e-4)) for g, v in gaps.items())
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method, color=color[method])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("grains")
        ax.set_ylabel("gap to best, meV/atom\n(mean over seeds; best at 1e-4)")
        ax.set_title("box relaxed" if box else "fixed box")
        ax = axes[0, 2 * k + 1]
        done = [r for r in rows if r["box"] == box and r.get("status") == "ok"]
        largest = max((r["grains"] for r in done), default=None)
        first_seed = min((r.get("seed", 0) for r in done if r["grains"] == largest), default=0)
        group = [r for r in done if r["grains"] == largest and r.get("seed", 0) == first_seed]
        if group:
            best = min(min(r["curve"][1]) for r in group)
            for r in group:
                evals, energies = (np.asarray(v) for v in r["curve"])
                ax.plot(
                    evals,
                    np.maximum((energies - best) / r["natoms"] * 1000, 1e-4),
                    label=r["method"],
                    lw=1,
                    color=color[r["method"]],
                )
            ax.set_yscale("log")
            ax.set_xlabel("force evaluations")
            ax.set_ylabel("energy above best, meV/atom")
            ax.set_title(
                f"{largest} grains{f', seed {first_seed}' if first_seed else ''}, "
                f"{'box relaxed' if box else 'fixed box'}"
            )
    handles: dict[str, object] = {}  # one legend for all panels, below them, where it hides no data
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    rows_of_legend = -(-len(handles) // 4)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
