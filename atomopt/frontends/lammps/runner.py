"""Run an ordinary LAMMPS input in which ``min_style safelbfgs|frankenstein|adan|adamnx|innaprop`` works.

    atomopt lammps -in in.relax -var T 300 -log log.relax
    mpirun -np 4 atomopt lammps -in in.relax

Every input line goes to LAMMPS unchanged, except while an atomopt min style
is selected: then ``min_modify`` keywords are collected (LAMMPS's own
``dmax`` and ``norm`` are honoured and also passed on) and each
``minimize etol ftol maxiter maxeval`` is executed by
:func:`atomopt.frontends.lammps.driver.minimize`. ``min_style cg`` (or any
native style) hands minimization back to LAMMPS. ``include`` files are read
the same way (relative to the working folder or, failing that, to the
including file). ``jump`` is refused: a loop would re-read the file behind this
runner's back; drive loops from Python with ``atomopt.lammps.minimize``.

Arguments other than ``-in``/``-i`` are LAMMPS command-line arguments
(``-var``, ``-log``, ``-screen``, ``-echo``, ``-sf``, ``-pk``, ...).

atomopt ``min_modify`` keywords: ``lr`` (length), ``eps``, ``paper_exact yes|no``,
``device cpu|cuda``, ``dtype float64|float32``, ``precon bond|exp|auto|none`` (SafeLBFGS's H⁰ from the Exp
preconditioner; none by default; auto is bond for safelbfgs and none for the other styles) and ``precon_tolerance``
(the relative residual of its conjugate-gradient solves, above 512 minimized rows), the update rule's
hyperparameters by name (e.g. ``memory 20`` for SafeLBFGS, ``form appendix_b``
for Frankenstein, ``beta1 0.02`` for Adan), and for every step control of :data:`atomopt.controls.CONTROLS`
``NAME yes|no`` and its fields as ``NAME_FIELD value`` (``fire no``,
``fire_f_dec 0.5``, ``secant yes``, ``auto_eps_warmup 20``).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from atomopt.controls import CONTROL_NAMES, keyword_fields
from atomopt.core.precon import PRECON_CHOICES
from atomopt.frontends.lammps.box import BoxRelax
from atomopt.frontends.lammps.driver import (
    NORMS,
    UNSUPPORTED_FIX_STYLES,
    MinimizeResult,
    defined_fixes,
    minimize,
)
from atomopt.frontends.lammps.library import SerialComm, import_lammps, world_comm
from atomopt.frontends.lammps.transcript import ECHO_MODES, Transcript
from atomopt.rules import RULES

ATOMOPT_STYLES = tuple(RULES)
_GENERAL_KEYWORDS = ("lr", "eps", "paper_exact", "device", "dtype", "precon", "precon_tolerance") + CONTROL_NAMES
#: ``NAME_FIELD``: a field of a step control (``fire_f_dec 0.5``, ``secant_max_factor 1.5``, ...).
_CONTROL_FIELD_KEYWORDS = keyword_fields()
#: Each update-rule hyperparameter's declared type, which says how its min_modify value is read.
_RULE_FIELD_TYPES = {f.name: str(f.type) for rule in RULES.values() for f in dataclasses.fields(rule)}
#: LAMMPS's own min_modify keywords (passed on to LAMMPS).
_NATIVE_KEYWORDS = (
    "dmax",
    "line",
    "norm",
    "alpha_damp",
    "discrete_factor",
    "integrator",
    "tmax",
    "tmin",
    "delaystep",
    "dtgrow",
    "dtshrink",
    "alpha0",
    "alphashrink",
    "vdfmax",
    "halfstepback",
    "initialdelay",
    "abcfire",
)
_DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}


#: Commands the runner carries out or tracks itself: an ``if`` whose branches hold one is run through the runner.
RUNNER_COMMANDS = (
    "minimize", "min_style", "min_modify", "fix", "unfix", "clear", "include", "jump", "echo", "log", "if",
)  # fmt: skip
#: LAMMPS's neigh_modify defaults, which its minimizers switch to for the minimization.
NEIGHBOR_DEFAULTS = {"every": "1", "delay": "0", "check": "yes"}
#: Integrators that keep no state of their own (defining them again after a minimization changes nothing).
STATELESS_INTEGRATORS = ("nve", "nve/sphere", "nve/asphere", "nve/limit")
_BRANCH = "atomopt_if_branch"


def _quoted(text: str) -> str:
    """``text`` as one quoted LAMMPS word."""
    return f'"""{text}"""' if '"' in text else f'"{text}"'


class InputError(ValueError):
    """An input line the runner cannot execute."""


class InputRunner:
    """Feeds an input to a LAMMPS instance, executing atomopt minimizations itself."""

    def __init__(self, lmp: Any, comm: Any, transcript: Transcript) -> None:
        self.lmp, self.comm, self.transcript = lmp, comm, transcript
        self.style: str | None = None  # atomopt style in force, None while a native style is
        self.options: dict[str, Any] = {}
        self.norm = "two"
        self.dmax: float | None = None
        self.results: list[MinimizeResult] = []
        self.box_fixes: dict[str, tuple[str, list[str]]] = {}  # fix box/relax ID → (group, arguments)
        self.fix_commands: dict[str, str] = {}  # fix ID → its command as defined (variables expanded)
        self.neighbor_checks = dict(NEIGHBOR_DEFAULTS)  # neigh_modify every / delay / check as the input set them
        self._folders: list[Path] = []  # folders of the files being read, innermost last

    def _reset(self) -> None:
        """After ``clear``: LAMMPS is back to min_style cg with no fixes, and so is the runner."""
        self.style, self.options, self.norm, self.dmax = None, {}, "two", None
        self.box_fixes.clear()
        self.fix_commands.clear()
        self.neighbor_checks = dict(NEIGHBOR_DEFAULTS)

    def run_file(self, path: str | Path) -> None:
        """Execute every command of the input file ``path``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LAMMPS input file {path} not found")
        self._folders.append(path.parent)
        try:
            for line in logical_lines(path.read_text()):
                self.execute(line)
        finally:
            self._folders.pop()

    def execute(self, line: str) -> None:
        """Echo and execute one logical input line (continuations already joined)."""
        words = strip_comment(line).split()
        try:
            expanded = self.lmp.expand(line) if "$" in line else line
        except Exception:  # an undefined variable: LAMMPS reports it when it runs the line
            expanded = None
        self.transcript.echo(line, expanded)
        if not words:
            return
        command = words[0]
        if command == "jump":
            raise InputError("'jump' is not supported by atomopt lammps; loop in Python with atomopt.lammps.minimize")
        if command in ("echo", "log"):  # the transcript writes screen and log; LAMMPS's own stay off
            self._output_command(shlex.split(self.lmp.expand(strip_comment(line))))
            return
        if command in ("fix", "unfix"):
            self._track_fix(shlex.split(self.lmp.expand(strip_comment(line))))
        if command == "neigh_modify":
            words = shlex.split(self.lmp.expand(strip_comment(line)))[1:]
            self.neighbor_checks.update(
                {key: value for key, value in zip(words, words[1:]) if key in NEIGHBOR_DEFAULTS}
            )
        if command == "if" and self._branches_need_the_runner(line):
            self._if(line)
            return
        if command == "include":
            name = Path(self.lmp.expand(strip_comment(line)).split()[1])
            beside = self._folders[-1] / name if self._folders else name
            # as LAMMPS: relative to the working folder; failing that, beside the file that includes it
            self.run_file(name if name.is_file() or name.is_absolute() or not beside.is_file() else beside)
            return
        if command == "min_style":
            style = self.lmp.expand(strip_comment(line)).split()[1]
            self.style = style if style in ATOMOPT_STYLES else None
            if self.style is None:
                self.lmp.command(line)
            return
        if command == "min_modify" or (command == "minimize" and self.style is not None):
            words = shlex.split(self.lmp.expand(strip_comment(line)))
            if command == "min_modify":
                self._min_modify(words[1:])
            else:
                self._minimize(words[1:])
            return
        self.lmp.command(line)
        self.transcript.pump()
        if command == "clear":
            self._reset()

    def _branches_need_the_runner(self, line: str) -> bool:
        """Whether an ``if`` line's commands include one the runner must see (LAMMPS would run them natively)."""
        return any(word.split()[0] in RUNNER_COMMANDS for word in shlex.split(strip_comment(line))[2:] if word.split())

    def _if(self, line: str) -> None:
        """``if BOOLEAN then t1 t2 ... [elif BOOLEAN f1 ...]... [else e1 ...]`` with the branch chosen by LAMMPS
        itself (the same booleans, the same variable substitution) and its commands run through the runner, so that
        a ``minimize`` in a branch uses the atomopt style in force."""
        words = shlex.split(strip_comment(line))
        branches: list[list[str]] = []
        rewritten = ["if", _quoted(words[1]), "then"]
        k = 3
        while k <= len(words):
            commands = []
            while k < len(words) and words[k] not in ("elif", "else"):
                commands.append(words[k])
                k += 1
            rewritten.append(_quoted(f"variable {_BRANCH} equal {len(branches)}"))
            branches.append(commands)
            if k >= len(words):
                break
            if words[k] == "elif":
                rewritten += ["elif", _quoted(words[k + 1])]
                k += 2
            else:
                rewritten.append("else")
                k += 1
        if words[2:3] != ["then"]:
            raise InputError(f"if: expected 'then' after the condition, got {line.strip()!r}")
        self.lmp.commands_list([f"variable {_BRANCH} equal -1", " ".join(rewritten)])
        taken = int(self.lmp.extract_variable(_BRANCH))
        self.lmp.command(f"variable {_BRANCH} delete")
        for command in branches[taken] if taken >= 0 else []:
            self.execute(command)

    def _output_command(self, words: list[str]) -> None:
        """``echo MODE`` and ``log FILE [append]``, carried out by the transcript."""
        if len(words) < 2:
            raise InputError(f"{words[0]} needs an argument")
        if words[0] == "echo":
            if words[1] not in ECHO_MODES:
                raise InputError(f"echo must be one of {', '.join(ECHO_MODES)}, got {words[1]!r}")
            self.transcript.echo_mode = words[1]
        else:
            self.transcript.switch_log(words[1], append=len(words) > 2 and words[2] == "append")

    def _track_fix(self, words: list[str]) -> None:
        """Remember every fix's command (an integrator is lifted around an atomopt minimization and defined again)
        and the settings of ``fix ID group box/relax ...`` (the atomopt styles relax the box with them)."""
        if len(words) < 2:
            return
        self.box_fixes.pop(words[1], None)
        self.fix_commands.pop(words[1], None)
        if words[0] == "fix" and len(words) > 3:
            self.fix_commands[words[1]] = shlex.join(words)
            if words[3] == "box/relax":
                self.box_fixes[words[1]] = (words[2], words[4:])

    def _lifted_fixes(self) -> list[tuple[str, str, str]]:
        """(ID, style, command) of the defined fixes that move atoms in a run but that LAMMPS's minimizers never
        call (time integrators, thermostats, fix deform/move, ...), in definition order."""
        out = []
        for name, style, _ in defined_fixes(self.lmp, self.comm, ["echo none"], [f"echo {self.transcript.echo_mode}"]):
            if style != "box/relax" and style.startswith(UNSUPPORTED_FIX_STYLES):
                if name not in self.fix_commands:
                    raise InputError(
                        f"fix {name} ({style}) moves atoms in a run; LAMMPS's minimizers ignore it, and atomopt lifts "
                        "such a fix around its minimization, but this one was defined where the runner could not "
                        "read its command: unfix it before minimize"
                    )
                out.append((name, style, self.fix_commands[name]))
        return out

    def _min_modify(self, args: list[str]) -> None:
        if len(args) % 2:
            raise InputError(f"min_modify expects keyword value pairs, got {' '.join(args)!r}")
        native = []
        for key, value in zip(args[::2], args[1::2]):
            if key in _GENERAL_KEYWORDS or key in _RULE_FIELD_TYPES or key in _CONTROL_FIELD_KEYWORDS:
                optimizer_options({key: value})  # validate now, where the line is
                self.options[key] = value
                continue
            if key not in _NATIVE_KEYWORDS:
                raise InputError(
                    f"min_modify: unknown keyword {key!r}. atomopt keywords: {', '.join(_GENERAL_KEYWORDS)}; "
                    f"step-control fields: {', '.join(_CONTROL_FIELD_KEYWORDS)}; "
                    f"update-rule hyperparameters: {', '.join(sorted(_RULE_FIELD_TYPES))}; LAMMPS keywords: "
                    f"{', '.join(_NATIVE_KEYWORDS)}"
                )
            if key == "norm":
                if value not in NORMS:
                    raise InputError(f"min_modify norm must be one of {', '.join(NORMS)}, got {value!r}")
                self.norm = value
            elif key == "dmax":
                self.dmax = parse_number("dmax", value)
            native += [key, value]
        if native:
            self.lmp.command("min_modify " + " ".join(native))

    def _minimize(self, args: list[str]) -> None:
        if len(args) != 4:
            raise InputError(f"minimize expects etol ftol maxiter maxeval, got {' '.join(args)!r}")
        etol, ftol = float(args[0]), float(args[1])
        maxiter, maxeval = int(float(args[2])), int(float(args[3]))
        options = optimizer_options(self.options)
        if self.dmax is not None:
            options["max_step"] = self.dmax
        if len(self.box_fixes) > 1:
            raise InputError(f"more than one fix box/relax is defined ({', '.join(self.box_fixes)}); keep one")
        for group, args in self.box_fixes.values():
            options["box_relax"] = BoxRelax.parse(args, group)
        lifted = self._lifted_fixes()
        quiet, loud = ["echo none"], [f"echo {self.transcript.echo_mode}"]
        for name, style, _ in lifted:
            stateful = (
                "" if style in STATELESS_INTEGRATORS else " (its internal state, as a thermostat variable, restarts)"
            )
            self.lmp.command(
                f'print "atomopt: fix {name} ({style}) does not act during minimization, as with the native '
                f'minimizers: lifted for this minimize and defined again after it{stateful}"'
            )
        self.lmp.commands_list(quiet + [f"unfix {name}" for name, _, _ in lifted] + loud)
        # as LAMMPS's minimizers: neighbour lists checked and rebuilt at every step while minimizing (a step can move
        # an atom further than half the skin), the input's settings back afterwards
        switch = self.neighbor_checks != NEIGHBOR_DEFAULTS
        if switch:
            self.lmp.command(
                "print \"Switching to 'neigh_modify every 1 delay 0 check yes' setting during minimization\""
            )
            self.lmp.commands_list(quiet + ["neigh_modify every 1 delay 0 check yes"] + loud)
        self.transcript.begin_minimization(self.style)
        try:
            result = minimize(self.lmp, self.style, etol=etol, ftol=ftol, maxiter=maxiter, maxeval=maxeval,
                              norm=self.norm, comm=self.comm, **options)  # fmt: skip
        finally:
            self.transcript.end_minimization()
            restore = (
                ["neigh_modify " + " ".join(f"{k} {v}" for k, v in self.neighbor_checks.items())] if switch else []
            )
            self.lmp.commands_list(quiet + [command for _, _, command in lifted] + restore + loud)
        self.results.append(result)


def optimizer_options(raw: dict[str, str]) -> dict[str, Any]:
    """Convert ``min_modify`` keyword strings into :func:`minimize` keyword arguments."""
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _CONTROL_FIELD_KEYWORDS:
            continue  # below, once "NAME yes|no" is known
        if key in CONTROL_NAMES:
            options[key] = parse_flag(key, value)  # yes: the optimizer's preset, or the control's defaults
        elif key == "paper_exact":
            options[key] = parse_flag(key, value)
        elif key == "dtype":
            if value not in _DTYPES:
                raise InputError(f"min_modify dtype must be one of {sorted(_DTYPES)}, got {value!r}")
            options[key] = _DTYPES[value]
        elif key == "device":
            options[key] = value
        elif key == "precon":
            if value not in PRECON_CHOICES:
                raise InputError(f"min_modify precon must be one of {', '.join(PRECON_CHOICES)}, got {value!r}")
            options[key] = value
        else:  # lr, eps (numbers) and the rule's hyperparameters (as declared)
            options[key] = parse_typed(key, _RULE_FIELD_TYPES.get(key, "float"), value)
    fields: dict[str, dict[str, Any]] = {}
    for key in sorted(raw.keys() & _CONTROL_FIELD_KEYWORDS.keys()):
        (name, field), value = _CONTROL_FIELD_KEYWORDS[key], raw[key]
        fields.setdefault(name, {})[field.name] = parse_typed(key, str(field.type), value)
    for name, changes in fields.items():
        if options.get(name, True) is False:
            raise InputError(
                f"min_modify {', '.join(f'{name}_{k}' for k in changes)}: the {name} control is off ({name} no)"
            )
        options[name] = changes
    return options


def parse_typed(key: str, kind: str, value: str) -> Any:
    """A min_modify value read as its field's declared type ``kind``: ``bool`` (yes/no), ``int`` (a whole number),
    any type with ``float`` (a number), else a word (FIRE's acts_on, Frankenstein's form)."""
    if kind == "bool":
        return parse_flag(key, value)
    if kind == "int":
        number = parse_number(key, value)
        if not float(number).is_integer():
            raise InputError(f"min_modify {key} expects a whole number, got {value!r}")
        return int(number)
    if "float" in kind:
        return parse_number(key, value)
    return value


def parse_flag(key: str, value: str) -> bool:
    if value not in ("yes", "no"):
        raise InputError(f"min_modify {key} must be yes or no, got {value!r}")
    return value == "yes"


def parse_number(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(f"min_modify {key} expects a number, got {value!r}") from None


def strip_comment(line: str) -> str:
    """The line without a ``#`` comment outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if char in "\"'" and quote in (None, char):
            quote = None if quote == char else char
        elif char == "#" and quote is None:
            return line[:i]
    return line


def logical_lines(text: str) -> list[str]:
    """Input lines with ``&`` continuations joined; triple-quoted blocks kept whole."""
    lines: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        buffer = f"{buffer} {raw}" if buffer else raw
        if buffer.count('"""') % 2:
            buffer += "\n"
            continue
        stripped = strip_comment(buffer).rstrip()
        if stripped.endswith("&"):
            buffer = stripped[:-1]
            continue
        lines.append(buffer)
        buffer = ""
    if buffer:
        lines.append(buffer)
    return lines


def _take_option(args: list[str], flags: tuple[str, ...], default: str) -> str:
    """The value of a LAMMPS command-line option (removed from ``args``), or ``default``."""
    value = default
    for flag in flags:
        while flag in args[:-1]:
            k = args.index(flag)
            value = args[k + 1]
            del args[k : k + 2]
    return value


def main(argv: list[str] | None = None) -> int:
    """``atomopt lammps -in FILE [LAMMPS arguments]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    input_file = _take_option(args, ("-in", "-i"), "")
    if not input_file:
        print("atomopt lammps: give the input file with -in FILE", file=sys.stderr)
        return 2
    log = _take_option(args, ("-log", "-l"), "log.lammps")
    screen = _take_option(args, ("-screen", "-sc"), "stdout")
    echo = _take_option(args, ("-echo", "-e"), "log")
    if echo not in ECHO_MODES:
        print(f"atomopt lammps: -echo must be one of {', '.join(ECHO_MODES)}, got {echo!r}", file=sys.stderr)
        return 2
    lammps = import_lammps()
    comm = world_comm()
    kwargs = {} if isinstance(comm, SerialComm) else {"comm": comm}
    transcript = Transcript(comm, log=log, screen=screen, echo=echo)
    lmp = lammps.lammps(cmdargs=args + transcript.lammps_args(), **kwargs)
    transcript.start(lmp)
    status, message = 0, None
    try:
        InputRunner(lmp, comm, transcript).run_file(input_file)
    except (InputError, FileNotFoundError, ValueError, TypeError, RuntimeError, FloatingPointError) as error:
        status, message = 2, f"ERROR: {error}"
    except Exception:  # a LAMMPS error in an input line: LAMMPS has written it
        status = 1
    finally:
        transcript.failed = status != 0
        lmp.close()
        if message is not None:
            transcript.error(message)
        transcript.close()
    return status
