"""HEA benchmark, the dislocation analysis: OVITO's DXA of a minimized polycrystal, by Burgers-vector family."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: DXA's trial circuit lengths (OVITO's default 14 first): how robust an ordering of line lengths is to the
#: largest Burgers circuit the analysis tries (longer circuits find more lines in disordered boundaries).
DXA_CIRCUITS = (14, 12, 16)


#: fcc Burgers-vector families as OVITO's DXA names them: sorted |components| in lattice units. Lines whose
#: true Burgers vector is none of these are "other" (mostly in grain boundaries).
BURGERS_FAMILIES = {
    "1/2<110>": (0, 1 / 2, 1 / 2),
    "1/6<112>": (1 / 6, 1 / 6, 1 / 3),
    "1/6<110>": (0, 1 / 6, 1 / 6),
    "1/3<100>": (0, 0, 1 / 3),
    "1/3<111>": (1 / 3, 1 / 3, 1 / 3),
}


def burgers_family(true_burgers_vector: Sequence[float]) -> str:
    """The fcc family of a DXA line's true Burgers vector (lattice units), or ``"other"``."""
    magnitudes = np.sort(np.abs(np.asarray(true_burgers_vector, dtype=float)))
    return next(
        (name for name, family in BURGERS_FAMILIES.items() if np.allclose(magnitudes, family, atol=1e-4)), "other"
    )


def dislocations(dump: str, circuits: Sequence[int] = DXA_CIRCUITS) -> dict:
    """OVITO's dislocation analysis (DXA, fcc) of a LAMMPS dump: segments and line length in total and per
    Burgers-vector family (Table 6 of the paper, by type), Å, at the first trial circuit length; total segments
    and length at each of ``circuits`` (``by_circuit``)."""
    from ovito.io import import_file
    from ovito.modifiers import DislocationAnalysisModifier

    pipeline = import_file(dump)
    result: dict = {"by_circuit": {}}
    for circuit in circuits:
        pipeline.modifiers.clear()
        pipeline.modifiers.append(
            DislocationAnalysisModifier(
                input_crystal_structure=DislocationAnalysisModifier.Lattice.FCC, trial_circuit_length=circuit
            )
        )
        data = pipeline.compute()
        segments = len(data.dislocations.lines) if data.dislocations is not None else 0
        length = float(data.attributes.get("DislocationAnalysis.total_line_length", 0.0))
        result["by_circuit"][str(circuit)] = {"segments": segments, "total_length": length}
        if circuit == circuits[0]:
            counts = dict.fromkeys([*BURGERS_FAMILIES, "other"], 0)
            for line in data.dislocations.lines if data.dislocations is not None else []:
                counts[burgers_family(line.true_burgers_vector)] += 1
            result |= {
                "segments": segments,
                "total_length": length,
                "segments_by_family": counts,
                "length_by_family": {
                    key.split("DislocationAnalysis.length.", 1)[1]: float(value)
                    for key, value in data.attributes.items()
                    if key.startswith("DislocationAnalysis.length.")
                },
            }
    return result
