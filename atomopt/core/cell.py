"""Cell degrees of freedom as rows: ASE's FrechetCellFilter on batched tensors.

A structure with a free cell is optimized over its atoms' positions in the
reference (starting) cell, u = x·F⁻ᵀ, plus three rows N·log F, where F is the
deformation gradient (cell = reference·Fᵀ) and N the number of atoms. The
forces on those rows are the atoms' forces mapped by F and the gradient of the
energy with respect to log F (the Fréchet derivative of the matrix
exponential), divided by N; convergence takes the largest row norm over atoms
and cell rows together. These are the conventions of ASE's
``FrechetCellFilter`` (``ase.filters``, ``exp_cell_factor = N``), written for
many structures at once: every operation below is batched over ``(S, 3, 3)``
tensors, with no loop over structures.

Units: positions Å, cells Å (row vectors, as ASE), stresses eV/Å³ (ASE's sign:
positive stress means the structure would shrink the energy by expanding),
pressure eV/Å³, energies eV.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Voigt order of ASE's masks and 6-vectors: xx, yy, zz, yz, xz, xy.
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
#: c of the cell rows c·log F: N (ASE's ``exp_cell_factor``) or √N (docs/safe_lbfgs.md, "Cell rows").
CELL_ROW_SCALES = ("atoms", "sqrt_atoms")


@dataclass(frozen=True)
class CellFilter:
    """Options of the cell degrees of freedom, as ``ase.filters.FrechetCellFilter`` takes them.

    Args:
        scalar_pressure: external pressure, eV/Å³ (``ase.units.GPa`` converts); the target is then the enthalpy.
        hydrostatic_strain: only isotropic deformation (the virial is replaced by its mean trace).
        constant_volume: deformation at constant volume (the trace is projected out of the cell forces and steps).
        mask: six booleans in Voigt order (xx, yy, zz, yz, xz, xy): the strain components that relax.
        volume_bounds: a structure whose volume leaves [lower, upper] × its starting volume is stopped
            (``cell_collapsed`` / ``cell_exploded``) instead of being relaxed further.
        row_scale: c of the cell rows c·log F that the optimizer moves: ``"atoms"`` (c = N, ASE's
            ``exp_cell_factor``) or ``"sqrt_atoms"`` (c = √N); ``None``: the update rule's own
            (:attr:`atomopt.core.rule.UpdateRule.cell_row_scale`). The stopping test reads the cell forces at N either
            way.
    """

    scalar_pressure: float = 0.0
    hydrostatic_strain: bool = False
    constant_volume: bool = False
    mask: tuple[bool, bool, bool, bool, bool, bool] | None = None
    volume_bounds: tuple[float, float] = (0.2, 5.0)
    row_scale: str | None = None

    def __post_init__(self) -> None:
        if self.row_scale not in (None, *CELL_ROW_SCALES):
            raise ValueError(f"CellFilter: row_scale must be one of {CELL_ROW_SCALES} or None, got {self.row_scale!r}")
        if self.mask is not None and len(self.mask) != 6:
            raise ValueError(f"CellFilter: mask takes six booleans in Voigt order, got {self.mask!r}")
        lower, upper = self.volume_bounds
        if not 0.0 < lower < 1.0 < upper:
            raise ValueError(f"CellFilter: volume_bounds must satisfy 0 < lower < 1 < upper, got {self.volume_bounds}")

    def mask3x3(self, dtype: torch.dtype, device: torch.device | str) -> Tensor | None:
        """The mask as a symmetric 3×3 tensor, or ``None`` when every component relaxes."""
        if self.mask is None or all(self.mask):
            return None
        out = torch.zeros(3, 3, dtype=dtype, device=device)
        for keep, (i, j) in zip(self.mask, VOIGT_PAIRS):
            out[i, j] = out[j, i] = float(keep)
        return out


def relaxable_stress(stress: Tensor, options: CellFilter) -> Tensor:
    """The part of ``(S, 3, 3)`` stresses (eV/Å³) that the cell degrees of freedom of ``options`` drive to zero.

    That is σ + p·I (ASE's sign: at equilibrium under pressure p the stress is −p·I), reduced to what the filter
    can change: its mean trace under ``hydrostatic_strain``, its traceless part under ``constant_volume``, the
    masked-in components under ``mask``.
    """
    eye = torch.eye(3, dtype=stress.dtype, device=stress.device)
    residual = stress + options.scalar_pressure * eye
    trace = residual.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / 3.0
    if options.hydrostatic_strain:
        residual = trace * eye
    if options.constant_volume:
        residual = residual - trace * eye
    mask = options.mask3x3(stress.dtype, stress.device)
    return residual if mask is None else residual * mask


def deformation(log_deformation: Tensor) -> Tensor:
    """F = exp(log F) for ``(S, 3, 3)`` log-deformations."""
    return torch.linalg.matrix_exp(log_deformation)


def deformed(undeformed: Tensor, reference_cell: Tensor, F: Tensor, structure: Tensor) -> tuple[Tensor, Tensor]:
    """Positions ``(N, 3)`` and cells ``(S, 3, 3)`` after deformation ``F``: x = u·Fᵀ, cell = reference·Fᵀ."""
    cell = reference_cell @ F.transpose(1, 2)
    positions = torch.einsum("nk,njk->nj", undeformed, F[structure])
    return positions, cell


def cell_forces(
    forces: Tensor,
    stress: Tensor,
    cell: Tensor,
    log_deformation: Tensor,
    F: Tensor,
    structure: Tensor,
    options: CellFilter,
) -> tuple[Tensor, Tensor]:
    """Forces on the atom rows ``(N, 3)`` and the gradient rows of log F ``(S, 3, 3)`` (not yet divided by N).

    ``forces`` (eV/Å) and ``stress`` ``(S, 3, 3)`` (eV/Å³) are the model's at the deformed positions.
    Follows ``CellUtility.get_forces_frechet`` of ASE step by step; the Fréchet derivative of exp at log F,
    applied adjointly to the cell gradient G, is the upper-right block of exp([[log Fᵀ, G], [0, log Fᵀ]]).
    """
    eye = torch.eye(3, dtype=stress.dtype, device=stress.device)
    volume = torch.linalg.det(cell).abs()
    virial = -volume[:, None, None] * (stress + options.scalar_pressure * eye)
    if options.hydrostatic_strain:
        virial = eye * (virial.diagonal(dim1=1, dim2=2).sum(-1) / 3.0)[:, None, None]
    mask = options.mask3x3(stress.dtype, stress.device)
    if mask is not None:
        virial = virial * mask
    # UnitCellFilter's cell gradient virial·F⁻ᵀ, i.e. the solution X of F·Xᵀ = virialᵀ
    gradient = torch.linalg.solve(F, virial.transpose(1, 2)).transpose(1, 2)
    n = log_deformation.shape[0]
    block = torch.zeros(n, 6, 6, dtype=stress.dtype, device=stress.device)
    log_t = log_deformation.transpose(1, 2)
    block[:, :3, :3] = log_t
    block[:, 3:, 3:] = log_t
    block[:, :3, 3:] = gradient
    log_force = torch.linalg.matrix_exp(block)[:, :3, 3:]
    if options.constant_volume:
        log_force = remove_trace(log_force)
    atom_forces = torch.einsum("nk,nkj->nj", forces, F[structure])
    return atom_forces, log_force


def remove_trace(matrices: Tensor) -> Tensor:
    """``(S, 3, 3)`` matrices with a third of their trace taken off the diagonal."""
    eye = torch.eye(3, dtype=matrices.dtype, device=matrices.device)
    return matrices - eye * (matrices.diagonal(dim1=1, dim2=2).sum(-1) / 3.0)[:, None, None]


def constrain_cell_step(step: Tensor, options: CellFilter) -> Tensor:
    """Keep a step of the log-deformation rows ``(S, 3, 3)`` inside the deformations the options allow.

    ASE projects only the cell forces; an adaptive optimizer scales each coordinate differently, so its step
    leaves that subspace (a constant-volume run would drift in volume). Projecting the step as well makes the
    constraints exact: det F = exp(tr log F) stays 1 at constant volume, log F stays isotropic for hydrostatic
    strain, and masked components stay at zero.
    """
    if options.hydrostatic_strain:
        eye = torch.eye(3, dtype=step.dtype, device=step.device)
        step = eye * (step.diagonal(dim1=1, dim2=2).sum(-1) / 3.0)[:, None, None]
    mask = options.mask3x3(step.dtype, step.device)
    if mask is not None:
        step = step * mask
    if options.constant_volume:
        step = remove_trace(step)
    return step
