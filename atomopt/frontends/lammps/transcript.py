"""The screen and log of ``atomopt lammps``, written as LAMMPS writes them.

An atomopt minimization runs as LAMMPS commands of its own (a ``run`` with fixes, ``print`` for the
statistics), which LAMMPS would echo and report like any input line. So the runner starts LAMMPS with its
echo off, its log off and its screen going to a capture file, and writes the user's screen and log itself:

* every input line is echoed as LAMMPS would (``echo`` none / screen / log / both; the line after variable
  substitution follows it when that differs), the driver's own commands never are;
* LAMMPS's output is copied from the capture file, to the log without the screen-only "Setting up ..."
  blocks, as LAMMPS does;
* during an atomopt minimization the run's set-up reads like a minimization's ("Setting up frankenstein style
  minimization ...", no time-integration warning) and the driver's final one-line ``run 0`` becomes the last
  line of the one thermo block;
* errors are written to both, as the last lines.

Only MPI rank 0 writes. A thread copies LAMMPS's output while long commands run, so thermo lines appear as
they are computed. Output that LAMMPS sends to the log alone (``print ... screen no``, ``info ... out log``) is
not seen and does not reach the log.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, TextIO

ECHO_MODES = ("none", "screen", "log", "both")
_SETUP_DETAILS = ("  Unit style", "  Current step", "  Time step")
_INTEGRATION_WARNING = "WARNING: No fixes with time integration, atoms won't move"


class Transcript:
    """Screen and log of one ``atomopt lammps`` run (see the module docstring)."""

    def __init__(self, comm: Any, log: str = "log.lammps", screen: str = "stdout", echo: str = "log") -> None:
        self.rank0 = comm.rank == 0
        self.echo_mode = echo
        self._lock = threading.RLock()
        capture = None
        if self.rank0:
            handle, capture = tempfile.mkstemp(prefix="atomopt-screen-", suffix=".txt")
            os.close(handle)
        self.capture = comm.bcast(capture, root=0)
        self._reader: TextIO | None = None
        self._log: TextIO | None = None
        self._screen: TextIO | None = None
        if self.rank0:
            self.switch_log(log)
            self._screen = sys.stdout if screen == "stdout" else None if screen == "none" else open(screen, "w")
        self._partial = ""
        self._minimizing: str | None = None
        self._held: list[str] | None = None
        self._skip_setup = False
        self._skip_warning_detail = False
        self._header: str | None = None
        self.failed = False  # after an error LAMMPS's closing "Total wall time" is left out, as LAMMPS does
        self._stop = threading.Event()
        self._flush: Any = None
        self._thread: threading.Thread | None = None

    def lammps_args(self) -> list[str]:
        """Command-line arguments that hand LAMMPS's output to this transcript."""
        return ["-echo", "none", "-log", "none", "-screen", self.capture]

    # -- files ------------------------------------------------------------------------------------
    def switch_log(self, path: str, append: bool = False) -> None:
        """The ``log`` command: write the log to ``path`` from now on (``none``: no log)."""
        if not self.rank0:
            return
        with self._lock:
            if self._log is not None:
                self._log.close()
            self._log = None if path == "none" else open(path, "a" if append else "w")

    def start(self, lmp: Any) -> None:
        """Copy the output of ``lmp`` as it comes (a daemon thread), until :meth:`close`."""
        self._flush = lmp.flush_buffers  # LAMMPS's screen file is fully buffered: flushed before each copy
        if self.rank0:
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(0.3):
            self.pump()

    def close(self) -> None:
        """Copy what is left, close the files and remove the capture file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._flush = None  # LAMMPS is closed: its output is all in the file
        if not self.rank0:
            return
        self.pump()
        with self._lock:
            if self._partial:
                self._emit(self._partial)
                self._partial = ""
            if self._reader is not None:
                self._reader.close()
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._screen not in (None, sys.stdout):
                self._screen.close()
            Path(self.capture).unlink(missing_ok=True)

    # -- what the runner writes ---------------------------------------------------------------------
    def echo(self, line: str, expanded: str | None = None) -> None:
        """Echo an input line (and its substituted form when that differs), as LAMMPS's ``echo`` does."""
        if not self.rank0 or self.echo_mode == "none":
            return
        self.pump()
        lines = [line] + ([expanded] if expanded is not None and expanded != line else [])
        with self._lock:
            for text in lines:
                if self.echo_mode in ("log", "both"):
                    self._write(self._log, text)
                if self.echo_mode in ("screen", "both"):
                    self._write(self._screen, text)

    def error(self, message: str) -> None:
        """An error, written to the screen (stderr when the screen is off) and the log, after all output."""
        if not self.rank0:
            return
        self.pump()
        with self._lock:
            self._write(self._log, message)
            self._write(self._screen if self._screen is not None else sys.stderr, message)

    def begin_minimization(self, style: str) -> None:
        """From here LAMMPS's output is that of an atomopt minimization with ``style``."""
        self.pump()
        with self._lock:
            self._minimizing, self._held, self._header = style, None, None

    def end_minimization(self) -> None:
        """Write the held end of the minimization, with the final thermo line inside the thermo block."""
        self.pump()
        with self._lock:
            held, self._minimizing, self._held = self._held or [], None, None
            final = None
            if self._header is not None and self._header in held:  # the driver's run 0: header, line, loop time
                k = held.index(self._header)
                final = held[k + 1] if k + 1 < len(held) else None
                end = k + 2
                if end < len(held) and held[end].startswith("Loop time of"):
                    end += 1
                if end < len(held) and not held[end].strip():
                    end += 1
                held = held[:k] + held[end:]
            for text in ([final] if final is not None else []) + held:
                self._emit_both(text)

    # -- copying LAMMPS's output ----------------------------------------------------------------------
    def pump(self) -> None:
        """Copy the complete lines LAMMPS has written since the last call."""
        if not self.rank0:
            return
        with self._lock:
            if self._flush is not None:
                self._flush()
            if self._reader is None:
                if not Path(self.capture).exists():
                    return
                self._reader = open(self.capture)
            text = self._partial + self._reader.read()
            lines = text.split("\n")
            self._partial = lines.pop()
            for line in lines:
                self._emit(line)

    def _emit(self, line: str) -> None:
        if line.startswith("Setting up ") or (self._skip_setup and line.startswith(_SETUP_DETAILS)):
            # screen-only in LAMMPS; a driver's run reads like the minimization it is
            self._skip_setup = True
            if self._minimizing is not None:
                if line.startswith("Setting up "):
                    line = f"Setting up {self._minimizing} style minimization ..."
                elif line.startswith("  Time step"):
                    return
            self._write(self._screen, line)
            return
        self._skip_setup = False
        if self.failed and line.startswith("Total wall time"):
            return
        if self._minimizing is None:
            self._emit_both(line)
            return
        if line.startswith(_INTEGRATION_WARNING):
            self._skip_warning_detail = True
            return
        if self._skip_warning_detail and line.startswith("For more information see"):
            self._skip_warning_detail = False
            return
        self._skip_warning_detail = False
        if self._held is not None:
            self._held.append(line)
            return
        if self._header is None and line.lstrip().startswith("Step"):
            self._header = line
        if line.startswith("Loop time of"):
            self._held = [line]
            return
        self._emit_both(line)

    def _emit_both(self, line: str) -> None:
        self._write(self._log, line)
        self._write(self._screen, line)

    @staticmethod
    def _write(stream: TextIO | None, line: str) -> None:
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
