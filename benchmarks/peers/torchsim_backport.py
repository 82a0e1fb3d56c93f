"""Install TorchSim (``torch-sim-atomistic``) 0.4+ on Python 3.11: a syntax-only backport made at install time.

TorchSim 0.4 and later declare Python >= 3.12 only for PEP 695's generic syntax (``def f[T: Bound](...)``,
``class C[T]:``, ``type X = ...``); nothing else they use is newer than 3.11. This script takes TorchSim's
own distribution from PyPI (or a file given with ``--dist``), rewrites each such declaration into 3.11 syntax
with ``typing.TypeVar``/``typing.Generic``, relaxes ``requires-python``, checks that every module of the
package then parses on this Python, and installs it into the environment of ``--python``. Nothing of
TorchSim is kept in this repository: the rewrite happens on the downloaded file, every time.

The rewrite works on tokens (Python 3.11's ``ast`` cannot parse the new syntax). Type parameters become
module-level TypeVars declared just before the first top-level statement that uses them. A bound stays as a
string forward reference when every site of the module gives the same one and is dropped otherwise (bounds
and variance have no runtime effect). Each rewritten site is reported.

    python benchmarks/peers/torchsim_backport.py --version 0.6.2 --python .venv-torchsim06/bin/python
    python benchmarks/peers/torchsim_backport.py --dist torch_sim_atomistic-0.6.2.tar.gz --no-install --out /tmp/ts
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "torch-sim-atomistic"
#: The module the rewritten declarations import: one private name, so no module name can clash with it.
TYPING_ALIAS = "_pep695_typing"
#: Appended to the version as a PEP 440 local label, so the installed metadata says it is this backport.
LOCAL_LABEL = "py311backport"
SKIPPED = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE, tokenize.ENCODING}


@dataclass
class TypeParam:
    """One PEP 695 type parameter: ``T``, ``T: bound``, ``T: (A, B)``, ``*Ts`` or ``**P``."""

    name: str
    kind: str  # "TypeVar", "TypeVarTuple" or "ParamSpec"
    bound: str | None = None  # source text of the bound, or of the constraint tuple

    @property
    def generic_argument(self) -> str:
        """How the parameter appears in ``Generic[...]``."""
        return f"*{self.name}" if self.kind == "TypeVarTuple" else self.name


@dataclass
class Site:
    """One rewritten declaration, for the report."""

    path: str
    line: int
    kind: str  # "function", "class" or "type alias"
    name: str
    params: list[TypeParam]

    def describe(self) -> str:
        params = ", ".join(
            ("*" if p.kind == "TypeVarTuple" else "**" if p.kind == "ParamSpec" else "")
            + p.name
            + (f": {p.bound}" if p.bound else "")
            for p in self.params
        )
        generic = f"generic {self.kind} {self.name}[{params}]" if self.params else f"{self.kind} {self.name}"
        return f"{self.path}:{self.line}: {generic}"


@dataclass
class ModuleRewrite:
    """The rewritten text of one module and the sites it rewrote."""

    text: str
    sites: list[Site] = field(default_factory=list)
    declarations: list[str] = field(default_factory=list)


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split ``text`` on ``separator`` outside brackets and string literals."""
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    parts, depth, last_end = [], 0, 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type != tokenize.OP:
                continue
            if token.string in "([{":
                depth += 1
            elif token.string in ")]}":
                depth -= 1
            elif token.string == separator and depth == 0:
                start = offsets[token.start[0] - 1] + token.start[1]
                parts.append(text[last_end:start])
                last_end = start + len(separator)
    except tokenize.TokenError:  # a fragment may end mid-expression; what was read is enough
        pass
    parts.append(text[last_end:])
    return [p.strip() for p in parts if p.strip()]


def parse_type_params(text: str) -> list[TypeParam]:
    """The parameters of one ``[...]`` list (its inside, without the brackets)."""
    params = []
    for part in _split_top_level(text):
        if len(_split_top_level(part, "=")) > 1:
            # PEP 696 defaults (Python 3.13) would need typing_extensions: not silently dropped
            raise ValueError(f"type parameter default not supported: {part!r}")
        if part.startswith("**"):
            params.append(TypeParam(part[2:].strip(), "ParamSpec"))
        elif part.startswith("*"):
            params.append(TypeParam(part[1:].strip(), "TypeVarTuple"))
        else:
            name, _, bound = part.partition(":")
            params.append(TypeParam(name.strip(), "TypeVar", bound.strip() or None))
    return params


def _as_forward_reference(expression: str) -> str:
    """A bound as a string literal: evaluated never, so names defined later in the module are fine."""
    if re.fullmatch(r"""(['"]).*\1""", expression, flags=re.S):
        return expression
    return json.dumps(" ".join(expression.split()))


def declaration(param: TypeParam, bound: str | None) -> str:
    """The module-level statement that replaces one type parameter."""
    args = [json.dumps(param.name)]
    if param.kind == "TypeVar" and bound is not None:
        if bound.startswith("("):  # constraints: T: (A, B)
            args += [_as_forward_reference(c) for c in _split_top_level(bound[1:-1])]
        else:
            args.append(f"bound={_as_forward_reference(bound)}")
    return f"{param.name} = {TYPING_ALIAS}.{param.kind}({', '.join(args)})"


def _matching_close(tokens: list[tokenize.TokenInfo], open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index``."""
    depth = 0
    for index in range(open_index, len(tokens)):
        token = tokens[index]
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced bracket at line {tokens[open_index].start[0]}")


def rewrite_module(text: str, path: str) -> ModuleRewrite:
    """Rewrite the PEP 695 declarations of one module's source into Python 3.11 syntax."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        return offsets[position[0] - 1] + position[1]

    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) on the original text
    result = ModuleRewrite(text)
    # first token of each top-level logical line (its row), and whether it is a decorator line
    top_level_starts: list[tuple[int, bool]] = []
    at_line_start = True
    first_site_row: int | None = None
    for index, token in enumerate(tokens):
        if token.type in SKIPPED:
            at_line_start = at_line_start or token.type == tokenize.NEWLINE
            continue
        statement_start = at_line_start
        at_line_start = False
        if statement_start and token.start[1] == 0:
            top_level_starts.append((token.start[0], token.string == "@"))
        following = tokens[index + 1 : index + 3]
        if len(following) < 2:
            continue
        is_generic_def = (
            token.type == tokenize.NAME
            and token.string in ("def", "class")
            and following[0].type == tokenize.NAME
            and following[1].type == tokenize.OP
            and following[1].string == "["
        )
        # ``type`` is a soft keyword: a statement only at the start of a logical line, followed by a name
        is_alias = (
            statement_start
            and token.type == tokenize.NAME
            and token.string == "type"
            and following[0].type == tokenize.NAME
            and following[1].type == tokenize.OP
            and following[1].string in ("=", "[")
        )
        if not (is_generic_def or is_alias):
            continue
        name = following[0].string
        params: list[TypeParam] = []
        after_name = index + 2
        if tokens[after_name].string == "[":
            close = _matching_close(tokens, after_name)
            params = parse_type_params(text[offset(tokens[after_name].end) : offset(tokens[close].start)])
            edits.append((offset(tokens[after_name].start), offset(tokens[close].end), ""))
            after_name = close + 1
        if is_alias:
            # ``type X = v`` -> ``X: TypeAlias = v`` (evaluated eagerly, unlike the lazy alias it replaces)
            edits.append((offset(token.start), offset(following[0].start), ""))
            edits.append((offset(following[0].end), offset(following[0].end), f": {TYPING_ALIAS}.TypeAlias"))
            kind = "type alias"
        elif token.string == "class":
            generic = f"{TYPING_ALIAS}.Generic[{', '.join(p.generic_argument for p in params)}]"
            bases = tokens[after_name]
            if bases.string == "(":
                close = _matching_close(tokens, after_name)
                empty = close == after_name + 1
                edits.append(
                    (offset(tokens[close].start), offset(tokens[close].start), ("" if empty else ", ") + generic)
                )
            else:
                edits.append((offset(bases.start), offset(bases.start), f"({generic})"))
            kind = "class"
        else:
            kind = "function"
        result.sites.append(Site(path, token.start[0], kind, name, params))
        if first_site_row is None:
            first_site_row = token.start[0]
    if not result.sites:
        return result

    # One TypeVar per name and module; its bound is kept only where all the module's sites agree on it.
    by_name: dict[str, list[TypeParam]] = {}
    for site in result.sites:
        for param in site.params:
            by_name.setdefault(param.name, []).append(param)
    for name, params in by_name.items():
        kinds = {p.kind for p in params}
        if len(kinds) > 1:
            raise ValueError(f"{path}: type parameter {name} is used as {sorted(kinds)}")
        bounds = {p.bound for p in params}
        bound = bounds.pop() if len(bounds) == 1 else None
        result.declarations.append(declaration(params[0], bound))
    _check_no_clash(tokens, set(by_name), path)

    # Declare them before the top-level statement holding the first site (before its decorators too).
    assert first_site_row is not None
    starts = [(row, is_decorator) for row, is_decorator in top_level_starts if row <= first_site_row]
    position = len(starts) - 1
    while position > 0 and starts[position - 1][1]:
        position -= 1
    insert_row = starts[position][0]
    header = (
        f"import typing as {TYPING_ALIAS}  # torchsim_backport: PEP 695 type parameters as TypeVars\n"
        + "".join(d + "\n" for d in result.declarations)
        + "\n\n"
    )
    edits.append((offsets[insert_row - 1], offsets[insert_row - 1], header))
    pieces, cursor = [], 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        pieces += [text[cursor:start], replacement]
        cursor = end
    pieces.append(text[cursor:])
    result.text = "".join(pieces)
    return result


def _check_no_clash(tokens: list[tokenize.TokenInfo], names: set[str], path: str) -> None:
    """Refuse a module that binds a type parameter's name at top level: the module-level TypeVar would shadow it."""
    at_line_start = True
    for index, token in enumerate(tokens):
        if token.type in SKIPPED:
            at_line_start = at_line_start or token.type == tokenize.NEWLINE
            continue
        starts, at_line_start = at_line_start, False
        if not (starts and token.start[1] == 0 and token.string in names):
            continue
        nxt = tokens[index + 1] if index + 1 < len(tokens) else None
        if nxt is not None and nxt.type == tokenize.OP and nxt.string in ("=", ":"):
            raise ValueError(f"{path}:{token.start[0]}: module-level name {token.string} clashes with a type parameter")


def rewrite_tree(root: Path, package_dir: Path) -> list[Site]:
    """Rewrite every module under ``package_dir`` in place; returns the sites, in file order."""
    sites: list[Site] = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = str(path.relative_to(root))
        text = path.read_text(encoding="utf-8")
        rewrite = rewrite_module(text, relative)
        if rewrite.sites:
            path.write_text(rewrite.text, encoding="utf-8")
            sites += rewrite.sites
        # every module must now parse and compile on this Python (catches any other 3.12-only syntax)
        compile(rewrite.text, relative, "exec", dont_inherit=True)
    return sites


def relax_requires_python(text: str, version: str) -> str:
    """``requires-python``/``Requires-Python`` lowered to 3.11, and the version given a local label."""
    text, n_pyproject = re.subn(r'(?m)^(requires-python\s*=\s*)"[^"]*"', r'\1">=3.11"', text)
    text, n_metadata = re.subn(r"(?m)^(Requires-Python:\s*).*$", r"\1>=3.11", text)
    text = re.sub(rf'(?m)^(version\s*=\s*"){re.escape(version)}"', rf'\g<1>{version}+{LOCAL_LABEL}"', text)
    text = re.sub(rf"(?m)^(Version:\s*){re.escape(version)}$", rf"\g<1>{version}+{LOCAL_LABEL}", text)
    if not (n_pyproject or n_metadata):
        raise ValueError("no requires-python field found")
    return text


def download(version: str, into: Path) -> Path:
    """TorchSim's sdist from PyPI (pip refuses 3.12-only releases on 3.11 unless told to ignore that)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--ignore-requires-python"]
        + ["--no-binary", PACKAGE, f"{PACKAGE}=={version}", "--dest", str(into)],
        check=True,
    )
    found = sorted(into.glob("torch_sim_atomistic-*.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip downloaded no sdist of {PACKAGE}=={version} into {into}")
    return found[0]


def _record_line(root: Path, path: Path) -> list[str]:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [str(path.relative_to(root)), f"sha256={digest}", str(len(data))]


def prepare(dist: Path, work: Path) -> tuple[Path, list[Site], str]:
    """Unpack ``dist`` (sdist or wheel) under ``work`` and rewrite it; returns (what pip installs, sites, version)."""
    if dist.name.endswith(".tar.gz"):
        with tarfile.open(dist) as archive:
            if hasattr(tarfile, "data_filter"):  # 3.11.4+: refuse links and paths leaving ``work``
                archive.extractall(work, filter="data")
            else:
                archive.extractall(work)
        (root,) = [p for p in work.iterdir() if p.is_dir()]
        version = root.name.rsplit("-", 1)[1]
        sites = rewrite_tree(root, root / "torch_sim")
        for name in ("pyproject.toml", "PKG-INFO"):
            if (root / name).exists():
                (root / name).write_text(relax_requires_python((root / name).read_text(), version))
        return root, sites, version
    if dist.suffix == ".whl":
        root = work / "wheel"
        with zipfile.ZipFile(dist) as archive:
            archive.extractall(root)
        version = dist.name.split("-")[1]
        sites = rewrite_tree(root, root / "torch_sim")
        (info,) = root.glob("*.dist-info")
        (info / "METADATA").write_text(relax_requires_python((info / "METADATA").read_text(), version))
        new_info = info.with_name(info.name.replace(version, f"{version}+{LOCAL_LABEL}"))
        info.rename(new_info)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "RECORD")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(_record_line(root, p) for p in files)
        writer.writerow([str((new_info / "RECORD").relative_to(root)), "", ""])
        (new_info / "RECORD").write_text(buffer.getvalue())
        wheel = work / dist.name.replace(f"-{version}-", f"-{version}+{LOCAL_LABEL}-")
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in [*files, new_info / "RECORD"]:
                archive.write(path, str(path.relative_to(root)))
        return wheel, sites, version
    raise ValueError(f"not an sdist (.tar.gz) or a wheel (.whl): {dist}")


def install(target: Path, python: str) -> None:
    """pip-install the rewritten package (and TorchSim's declared dependencies) into ``python``'s environment."""
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(target)], check=True)
    # the import itself is the test that matters: every rewritten module loads on this interpreter
    subprocess.run(
        [
            python,
            "-c",
            "import torch_sim, torch_sim.runners, torch_sim.optimizers; print('torch_sim', torch_sim.__version__)",
        ],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="0.6.2", help="TorchSim release to download (default 0.6.2)")
    parser.add_argument("--dist", type=Path, help="use this downloaded sdist or wheel instead of downloading")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the environment to install into")
    parser.add_argument("--out", type=Path, help="keep the rewritten tree/wheel here (default: a temporary folder)")
    parser.add_argument("--no-install", action="store_true", help="rewrite and check only")
    parser.add_argument("--report", type=Path, help="also write the rewritten sites as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="torchsim_backport_") as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        dist = args.dist or download(args.version, Path(scratch) / "download")
        unpacked = work / "unpacked"
        unpacked.mkdir(exist_ok=True)
        target, sites, version = prepare(dist, unpacked)
        for site in sites:
            print("rewrote", site.describe())
        n_files = len({s.path for s in sites})
        counts = {k: sum(s.kind == k for s in sites) for k in ("function", "class", "type alias")}
        print(
            f"{PACKAGE} {version}: {len(sites)} sites in {n_files} files "
            f"({counts['function']} generic functions, {counts['class']} generic classes, "
            f"{counts['type alias']} type aliases); requires-python relaxed to >=3.11; "
            f"version {version}+{LOCAL_LABEL}"
        )
        if args.report:
            args.report.write_text(
                json.dumps(
                    {
                        "version": version,
                        "sites": [dict(s.__dict__, params=[p.__dict__ for p in s.params]) for s in sites],
                    },
                    indent=1,
                )
            )
        if not args.no_install:
            install(target, args.python)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
