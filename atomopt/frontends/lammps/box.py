"""Variable-cell minimization in LAMMPS: ``fix box/relax`` read and turned into optimizer rows.

The box is LAMMPS's: lengths lx, ly, lz and tilts xy, xz, yz (row vectors a = (lx, 0, 0), b = (xy, ly, 0),
c = (xz, yz, lz)). Its degrees of freedom are dimensionless box strains relative to the box at the start,

    q_x = ln(lx/lx₀), q_y = ln(ly/ly₀), q_z = ln(lz/lz₀),
    q_xy = xy/ly − xy₀/ly₀, q_xz = xz/lz − xz₀/lz₀, q_yz = yz/lz − yz₀/lz₀,

so a tilt that does not relax keeps its ratio to its second length (LAMMPS's ``scalexy/scalexz/scaleyz yes``,
the default for periodic boxes) or its value (``no``). Atoms are optimized in the start box's frame,
u = x·Fᵀ⁻¹ with Fᵀ = H₀⁻¹·H (as ASE's cell filters), so a box step moves them affinely with the box.

The optimizer sees the box as two rows of three, ℓ·(q_x, q_y, q_z) and ℓ·(q_yz, q_xz, q_xy), with ℓ = V₀^(1/3)
the start box's edge: a row displacement is then a length (a change of the box edge, Å in metal units) and the
force on it −∂H/∂q / ℓ a force (eV/Å), like an atom's. (ASE's FrechetCellFilter scales by the number of atoms
instead, which makes the box of a 30,000-atom cell 10⁴ times softer than an atom.) The gradient uses the virial:
at fixed u, ∂E/∂H = V·H⁻ᵀ·(σ + P_target), σ the stress (−pressure tensor of the virial), H lower triangular.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Box components in the order of the rows: (x, y, z) then (yz, xz, xy).
COMPONENTS = ("x", "y", "z", "yz", "xz", "xy")
#: Entry of the lower-triangular box matrix H that each component sets.
ENTRY = {"x": (0, 0), "y": (1, 1), "z": (2, 2), "yz": (2, 1), "xz": (2, 0), "xy": (1, 0)}
#: The length a tilt is scaled with (its second dimension), as LAMMPS's scalexy/scalexz/scaleyz.
TILT_LENGTH = {"yz": "z", "xz": "z", "xy": "y"}
COUPLINGS = ("none", "xyz", "xy", "yz", "xz")


def stress_tensor(pressure: np.ndarray, nktv2p: float) -> np.ndarray:
    """The stress (3×3, energy/volume, positive when tensile) from LAMMPS's pressure vector (xx yy zz xy xz yz,
    pressure units; ``nktv2p`` converts energy/volume to them)."""
    p = np.asarray(pressure, dtype=np.float64) / nktv2p
    return -np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])


class BoxRelaxError(ValueError):
    """A ``fix box/relax`` the atomopt min styles cannot honour, or a malformed one."""


@dataclass(frozen=True)
class BoxRelax:
    """The settings of a ``fix box/relax`` (pressures in the LAMMPS pressure units, bar in metal).

    Args:
        targets: target pressure of each relaxed component (``x y z yz xz xy``).
        couple: diagonal components that share one strain (``none``, ``xyz``, ``xy``, ``yz``, ``xz``).
        vmax: largest fractional change of a box dimension (of the volume for ``iso``) in one iteration.
        dilate: ``all`` (every atom moves with the box) or ``partial`` (only the fix group's atoms).
        group: the fix's group.
        scale_tilt: per tilt, whether a tilt that does not relax keeps its ratio to its second length.
        fixedpoint: the point (box coordinates) that the deformation leaves in place; ``None``: the box centre.
    """

    targets: dict[str, float]
    couple: str = "none"
    vmax: float = 1.0e-4
    dilate: str = "all"
    group: str = "all"
    scale_tilt: dict[str, bool] = field(default_factory=lambda: {t: True for t in TILT_LENGTH})
    fixedpoint: tuple[float, float, float] | None = None
    iso: bool = False
    nreset: int = 0
    args: str = ""  # the fix's arguments as written (to define it again after an atomopt minimization)

    @classmethod
    def parse(cls, args: list[str] | str, group: str = "all") -> BoxRelax:
        """From the arguments after ``fix ID group box/relax`` (e.g. ``"iso 0.0 vmax 0.001"``)."""
        words = args.split() if isinstance(args, str) else list(args)
        targets: dict[str, float] = {}
        options: dict = {"group": group, "scale_tilt": {t: True for t in TILT_LENGTH}, "args": " ".join(words)}
        explicit_couple = None
        i = 0

        def value(kind: type = float):
            if i + 1 >= len(words):
                raise BoxRelaxError(f"fix box/relax: keyword {words[i]!r} needs a value")
            try:
                return kind(words[i + 1])
            except ValueError:
                raise BoxRelaxError(f"fix box/relax: {words[i]} expects a number, got {words[i + 1]!r}") from None

        while i < len(words):
            key = words[i]
            if key in ("iso", "aniso", "tri"):
                pressure = value()
                for c in ("x", "y", "z"):
                    targets[c] = pressure
                if key == "tri":
                    for c in ("yz", "xz", "xy"):
                        targets[c] = 0.0
                options["iso"] = key == "iso"
                i += 2
            elif key in COMPONENTS:
                targets[key] = value()
                i += 2
            elif key == "couple":
                explicit_couple = words[i + 1] if i + 1 < len(words) else None
                if explicit_couple not in COUPLINGS:
                    raise BoxRelaxError(
                        f"fix box/relax: couple must be one of {', '.join(COUPLINGS)}, got {explicit_couple!r}"
                    )
                i += 2
            elif key == "vmax":
                options["vmax"] = value()
                i += 2
            elif key == "nreset":  # every this many iterations the reference box of the energy terms is reset
                options["nreset"] = value(int)
                i += 2
            elif key == "dilate":
                options["dilate"] = words[i + 1] if i + 1 < len(words) else None
                if options["dilate"] not in ("all", "partial"):
                    raise BoxRelaxError(f"fix box/relax: dilate must be all or partial, got {options['dilate']!r}")
                i += 2
            elif key in ("scaleyz", "scalexz", "scalexy"):
                flag = words[i + 1] if i + 1 < len(words) else None
                if flag not in ("yes", "no"):
                    raise BoxRelaxError(f"fix box/relax: {key} must be yes or no, got {flag!r}")
                options["scale_tilt"][key[5:]] = flag == "yes"
                i += 2
            elif key == "fixedpoint":
                try:
                    options["fixedpoint"] = tuple(float(v) for v in words[i + 1 : i + 4])
                except ValueError:
                    raise BoxRelaxError(
                        f"fix box/relax: fixedpoint expects three numbers, got {words[i + 1 : i + 4]}"
                    ) from None
                if len(options["fixedpoint"]) != 3:
                    raise BoxRelaxError("fix box/relax: fixedpoint expects three numbers")
                i += 4
            elif key == "ptemp":
                value()  # only enters LAMMPS's strain energy, which the atomopt styles do not use
                i += 2
            else:
                raise BoxRelaxError(
                    f"fix box/relax: unknown keyword {key!r}; atomopt min styles take iso, aniso, "
                    "tri, x, y, z, yz, xz, xy, couple, vmax, nreset, dilate, scaleyz, scalexz, "
                    "scalexy, fixedpoint, ptemp"
                )
        if not targets:
            raise BoxRelaxError("fix box/relax: no component to relax (give iso, aniso, tri or x y z yz xz xy)")
        couple = "xyz" if options.get("iso") else (explicit_couple or "none")
        for c in couple if couple != "none" else "":
            if c not in targets:
                raise BoxRelaxError(f"fix box/relax: couple {couple} needs a target pressure for {c}")
        if couple != "none" and len({targets[c] for c in couple}) > 1:
            raise BoxRelaxError(f"fix box/relax: coupled dimensions {couple} need equal target pressures")
        if not options.get("vmax", 1.0) > 0:
            raise BoxRelaxError("fix box/relax: vmax must be positive")
        return cls(targets=targets, couple=couple, **options)

    # -- geometry -------------------------------------------------------------------------------------------
    def box_matrix(self, strains: np.ndarray, start: np.ndarray) -> np.ndarray:
        """The box H (3×3, lower triangular, rows a b c) at ``strains`` (6, in COMPONENTS order) from ``start``."""
        q = dict(zip(COMPONENTS, strains))
        h = np.zeros((3, 3))
        for c in ("x", "y", "z"):
            h[ENTRY[c]] = start[ENTRY[c]] * np.exp(q[c])
        for t, length in TILT_LENGTH.items():
            ratio = start[ENTRY[t]] / start[ENTRY[length]]
            if t in self.targets:
                h[ENTRY[t]] = (ratio + q[t]) * h[ENTRY[length]]
            elif self.scale_tilt[t]:
                h[ENTRY[t]] = ratio * h[ENTRY[length]]
            else:
                h[ENTRY[t]] = start[ENTRY[t]]
        return h

    def strain_gradient(self, box: np.ndarray, stress: np.ndarray) -> np.ndarray:
        """∂(E + target work)/∂q (6, energy units) at box H for the stress ``stress`` (3×3, energy/volume,
        positive when tensile); components that do not relax are zero, coupled ones share their mean."""
        effective = stress + self.target_tensor()
        volume = abs(np.linalg.det(box))
        # ∂E/∂H = V·H⁻ᵀ·σ: a strain ε (H → H(1 + ε)) changes E by V·tr(σε), and ε = H⁻¹·dH. Only the
        # lower-triangular entries of dh are box parameters.
        dh = volume * np.linalg.solve(box.T, effective)
        grad = {}
        for c in ("x", "y", "z"):
            grad[c] = dh[ENTRY[c]] * box[ENTRY[c]]
        for t, length in TILT_LENGTH.items():
            moves_with_length = t in self.targets or self.scale_tilt[t]
            if moves_with_length:  # the tilt is ratio·length: d tilt/d q_length = tilt
                grad[length] += dh[ENTRY[t]] * box[ENTRY[t]]
            grad[t] = dh[ENTRY[t]] * box[ENTRY[length]]
        return self.project(np.array([grad[c] for c in COMPONENTS]))

    def project(self, per_component: np.ndarray) -> np.ndarray:
        """Zero the components that do not relax and give coupled ones their mean (gradients and steps)."""
        out = np.array([v if c in self.targets else 0.0 for c, v in zip(COMPONENTS, per_component)])
        if self.couple != "none":
            members = [COMPONENTS.index(c) for c in self.couple]
            out[members] = out[members].mean()
        return out

    def limit(self, step: np.ndarray) -> np.ndarray:
        """Scale a strain step (6) so that no dimension changes by more than vmax (the volume, for iso)."""
        largest = 3.0 * abs(step[0]) if self.iso else float(np.abs(step).max())
        return step * min(1.0, self.vmax / largest) if largest > 0 else step

    def target_tensor(self) -> np.ndarray:
        """Target pressures as a symmetric 3×3 tensor (pressure units of the caller)."""
        p = np.zeros((3, 3))
        for c, value in self.targets.items():
            i, j = ENTRY[c]
            p[i, j] = p[j, i] = value
        return p

    def mean_pressure(self) -> float:
        """The mean target pressure of the relaxed lengths (its P·V is the hydrostatic part of the enthalpy whose
        gradient :meth:`strain_gradient` gives)."""
        lengths = [self.targets[c] for c in ("x", "y", "z") if c in self.targets]
        return float(np.mean(lengths)) if lengths else 0.0

    def lammps_terms(
        self,
        box: np.ndarray,
        start: np.ndarray,
        pressure: np.ndarray,
        nktv2p: float,
        dimension: int,
        reference: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray]:
        """What LAMMPS's ``fix box/relax`` adds to a minimization at box H (rows a b c) started from box H₀:
        its energy term (energy units; P_hydro·(V − V₀) plus the strain energy of a deviatoric target, V in 2-d the
        area) and the forces on its degrees of freedom (energy units; 1 for iso, 3 for aniso, 6 for tri), as
        ``FixBoxRelax::min_energy`` computes them (``pressure``: xx yy zz xy xz yz, pressure units). ``reference``:
        the box of the last ``nreset`` (default: the start box), which V₀ and the strain energy refer to. They
        define the energy and force norms of the stopping tests and statistics, as for LAMMPS's own minimizers;
        the optimizer moves the box by its own rows (module docstring)."""
        pv2e = 1.0 / nktv2p
        reference = start if reference is None else reference
        lengths, lengths0 = np.diag(box).copy(), np.diag(reference).copy()
        if dimension == 2:
            lengths[2] = lengths0[2] = 1.0
        vol0 = float(np.prod(lengths0))
        pxx, pyy, pzz, pxy, pxz, pyz = (float(v) for v in pressure)
        flag = [c in self.targets for c in COMPONENTS]
        target = [self.targets.get(c, 0.0) for c in COMPONENTS]
        if self.iso:
            current = (pxx + pyy) / 2 if dimension == 2 else (pxx + pyy + pzz) / 3
            scale = lengths[0] / lengths0[0]
            power = 2 if dimension == 2 else 3
            energy = pv2e * target[0] * (scale**power - 1.0) * vol0
            return energy, np.array([pv2e * (current - target[0]) * power * scale ** (power - 1) * vol0])
        diagonal = {"xyz": [(pxx + pyy + pzz) / 3] * 3, "xy": [(pxx + pyy) / 2] * 2 + [pzz],
                    "yz": [pxx] + [(pyy + pzz) / 2] * 2, "xz": [(pxx + pzz) / 2, pyy, (pxx + pzz) / 2],
                    "none": [pxx, pyy, pzz]}[self.couple]  # fmt: skip
        current = diagonal + [pyz, pxz, pxy]
        scales = [lengths[i] / lengths0[i] if flag[i] else 1.0 for i in range(3)]
        flagged = [target[i] for i in range(3) if flag[i]]
        hydro = float(np.mean(flagged)) if flagged else 0.0
        energy = pv2e * hydro * (np.prod(scales) - 1.0) * vol0
        extra = np.zeros(6 if self.triclinic() else 3)
        for i, (j, k) in enumerate(((1, 2), (0, 2), (0, 1))):
            if flag[i]:
                extra[i] = pv2e * (current[i] - hydro) * scales[j] * scales[k] * vol0
        x0, y0, z0 = lengths0
        if self.triclinic():
            sx, sy, sz = scales
            for i, factor in ((3, sy * y0 * sx * x0 * y0), (4, sx * x0 * sy * y0 * x0), (5, sx * x0 * sz * z0 * x0)):
                if flag[i]:
                    extra[i] = pv2e * current[i] * factor
        deviatoric = any(flag[i] and abs(target[i] - hydro) > 1e-6 for i in range(3)) or (
            self.triclinic() and any(flag[i] and abs(target[i]) > 1e-6 for i in range(3, 6))
        )
        if deviatoric:
            sigma = _lammps_sigma(start, reference, target, flag, hydro, vol0)
            h = _lammps_h(box)
            fdev = pv2e * _lammps_deviatoric_force(h, sigma, dimension)
            for i, length in enumerate((x0, y0, z0, y0, x0, x0)):
                if i < len(extra) and flag[i]:
                    extra[i] -= fdev[i] * length
            energy += pv2e * _lammps_strain_energy(h, sigma, dimension)
        return float(energy), extra

    def in_dimension(self, dimension: int) -> BoxRelax:
        """The settings LAMMPS applies in ``dimension``: in 2-d, iso / aniso / tri relax x, y (and xy) only, and
        x coupled with y is LAMMPS's iso style there (as iso itself)."""
        if dimension == 3:
            return self
        targets = {c: v for c, v in self.targets.items() if c in ("x", "y", "xy")}
        couple = "xy" if self.couple == "xyz" else self.couple
        return BoxRelax(**{**self.__dict__, "targets": targets, "couple": couple, "iso": couple == "xy"})

    def triclinic(self) -> bool:
        """LAMMPS's ``tri`` style: a tilt relaxes."""
        return any(t in self.targets for t in TILT_LENGTH)

    def scaled(self, pressure_unit: float) -> BoxRelax:
        """The same settings with the target pressures divided by ``pressure_unit`` (e.g. nktv2p: → energy/volume)."""
        return BoxRelax(**{**self.__dict__, "targets": {c: v / pressure_unit for c, v in self.targets.items()}})


def _lammps_h(box: np.ndarray) -> np.ndarray:
    """LAMMPS's box vector h = (xprd, yprd, zprd, yz, xz, xy) of a lower-triangular box (rows a b c)."""
    return np.array([box[0, 0], box[1, 1], box[2, 2], box[2, 1], box[2, 0], box[1, 0]])


def _lammps_sigma(
    start: np.ndarray, reference: np.ndarray, target: list[float], flag: list[bool], hydro: float, vol0: float
) -> np.ndarray:
    """``FixBoxRelax::compute_sigma``: the reference-box tensor of the deviatoric target (Voigt, pressure × volume
    before pv2e). As LAMMPS: the inverse box is the reference's (reset by nreset), h₀ the start box's."""
    h0 = _lammps_h(start)  # the true box (also in 2-d, where only V₀ takes the thickness as 1)
    r = _lammps_h(reference)
    # LAMMPS's h_inv (upper triangular inverse of the box as column vectors)
    inv = np.linalg.inv(np.array([[r[0], r[5], r[4]], [0.0, r[1], r[3]], [0.0, 0.0, r[2]]]))
    dev = np.zeros((3, 3))
    for i in range(3):
        if flag[i]:
            dev[i, i] = target[i] - hydro
    dev[1, 2] = dev[2, 1] = target[3]
    dev[0, 2] = dev[2, 0] = target[4]
    dev[0, 1] = dev[1, 0] = target[5]
    dev[1, 1] -= dev[1, 2] * inv[1, 2] * h0[1]
    dev[0, 1] -= dev[0, 2] * inv[1, 2] * h0[1]
    dev[1, 0] = dev[0, 1]
    dev[0, 0] -= dev[0, 1] * inv[0, 1] * h0[0] + dev[0, 2] * inv[0, 2] * h0[0]
    tensor = vol0 * inv @ dev @ inv.T
    return np.array([tensor[0, 0], tensor[1, 1], tensor[2, 2], tensor[1, 2], tensor[0, 2], tensor[0, 1]])


def _lammps_strain_energy(h: np.ndarray, sigma: np.ndarray, dimension: int) -> float:
    """``FixBoxRelax::compute_strain_energy`` before pv2e: ½ Tr(σ h hᵀ)."""
    if dimension == 2:
        d0 = sigma[0] * (h[0] ** 2 + h[5] ** 2) + sigma[5] * h[1] * h[5]
        d1 = sigma[5] * h[5] * h[1] + sigma[1] * h[1] ** 2
        return 0.5 * (d0 + d1)
    d0 = (
        sigma[0] * (h[0] ** 2 + h[5] ** 2 + h[4] ** 2) + sigma[5] * (h[1] * h[5] + h[3] * h[4]) + sigma[4] * h[2] * h[4]
    )
    d1 = sigma[5] * (h[5] * h[1] + h[4] * h[3]) + sigma[1] * (h[1] ** 2 + h[3] ** 2) + sigma[3] * h[2] * h[3]
    d2 = sigma[4] * h[4] * h[2] + sigma[3] * h[3] * h[2] + sigma[2] * h[2] ** 2
    return 0.5 * (d0 + d1 + d2)


def _lammps_deviatoric_force(h: np.ndarray, sigma: np.ndarray, dimension: int) -> np.ndarray:
    """``FixBoxRelax::compute_deviatoric`` before pv2e: h σ hᵀ in LAMMPS's component order."""
    if dimension == 2:
        return np.array([h[0] * sigma[0] + h[5] * sigma[5], h[1] * sigma[1], 0.0, 0.0, 0.0,
                         h[0] * sigma[5] + h[5] * sigma[1]])  # fmt: skip
    return np.array([
        h[0] * sigma[0] + h[5] * sigma[5] + h[4] * sigma[4],
        h[1] * sigma[1] + h[3] * sigma[3],
        h[2] * sigma[2],
        h[1] * sigma[3] + h[3] * sigma[2],
        h[0] * sigma[4] + h[5] * sigma[3] + h[4] * sigma[2],
        h[0] * sigma[5] + h[5] * sigma[1] + h[4] * sigma[3],
    ])  # fmt: skip
