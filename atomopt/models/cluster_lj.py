"""A fast Lennard-Jones for free clusters (OptBench), as an ASE calculator and on batched tensors."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes


class ClusterLennardJones(Calculator):
    """Lennard-Jones over all pairs, no cutoff, no periodicity (OptBench's LJ clusters).

    E = Σ_{i<j} 4ε[(σ/r)¹² − (σ/r)⁶]. ASE's ``LennardJones`` builds a neighbour
    list on every call; for a cluster of tens of atoms a dense all-pairs
    evaluation is several times faster, which matters for a benchmark of
    millions of force calls.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.sigma = sigma

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("ClusterLennardJones is for free clusters; use ase.calculators.lj.LennardJones with pbc")
        pos = self.atoms.positions
        diff = pos[:, None, :] - pos[None, :, :]
        r2 = np.einsum("ijk,ijk->ij", diff, diff)
        np.fill_diagonal(r2, np.inf)
        s6 = (self.sigma**2 / r2) ** 3
        energy = 2.0 * self.epsilon * np.sum(s6 * s6 - s6)  # each pair counted twice
        scalar = 24.0 * self.epsilon * (2.0 * s6 * s6 - s6) / r2
        forces = np.einsum("ij,ijk->ik", scalar, diff)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def cluster_lj_tensor(
    positions: torch.Tensor, n_atoms: int, epsilon: float = 1.0, sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched all-pairs Lennard-Jones of equal-size free clusters, on torch tensors.

    ``positions`` is ``(n_clusters · n_atoms, 3)`` (clusters stacked); returns energies ``(n_clusters,)`` and
    forces ``(n_clusters · n_atoms, 3)``, the same numbers as :class:`ClusterLennardJones` to round-off.
    Only ``(n_clusters, n_atoms, n_atoms)`` pair tensors are formed: r² from |x_i|² + |x_j|² − 2 x_i·x_j
    (coordinates are centred first, so the cancellation stays at round-off) and F_i = Σ_j c_ij (x_i − x_j)
    as x_i Σ_j c_ij − (C x)_i, both batched matrix products.
    """
    pos = positions.reshape(-1, n_atoms, 3) / sigma  # reduced units; few full-size temporaries (memory bound)
    pos = pos - pos.mean(dim=1, keepdim=True)
    square = (pos * pos).sum(-1)
    r2 = torch.baddbmm(square[:, :, None] + square[:, None, :], pos, pos.transpose(1, 2), alpha=-2.0)
    r2.diagonal(dim1=1, dim2=2).fill_(torch.inf)
    inverse = r2.reciprocal_()  # (σ/r)²
    s6 = torch.pow(inverse, 3)
    pair_energy = (s6 - 1.0).mul_(s6)  # (σ/r)¹² − (σ/r)⁶
    energy = (2.0 * epsilon) * pair_energy.sum(dim=(1, 2))  # each pair counted twice
    pair = torch.add(s6, pair_energy, alpha=2.0).mul_(inverse)  # (2(σ/r)¹² − (σ/r)⁶)(σ/r)²
    forces = (24.0 * epsilon / sigma) * (pos * pair.sum(-1, keepdim=True) - torch.bmm(pair, pos))
    return energy, forces.reshape(-1, 3)
