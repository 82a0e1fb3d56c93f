#!/usr/bin/env bash
# Make .whl/ (ignored by git): the Python packages that run_peers.sh needs and a lent GPU machine lacks, as wheels
# for its Python 3.12, small enough to travel with the repository (64 MiB a call, the repository's files included).
# Run it here, where PyPI answers; then, on the GPU machine, run_peers.sh installs them from .whl/ into /tmp/site.
#
#   bash benchmarks/gpu/make_device_bundle.sh
#
# What that machine has (its image): torch (CUDA), e3nn, torch-geometric, numpy, scipy, pandas, h5py, matplotlib,
# tqdm, pyyaml. What travels: ASE, vesin, spglib, sevenn with SevenNet-0 only (its wheel, 43 MB, carries four more
# pretrained models and its D3 libraries), matscipy and braceexpand (sevenn's graph building), TorchSim 0.6.2.
# What cannot travel: nvalchemi-toolkit-ops needs warp-lang, whose wheel alone is 149 MB: the nvalchemi rows are
# left out on such a machine (run_peers.sh says so). TorchSim's own nvalchemi neighbour list is optional (it falls
# back to its torch one); PyTables, which TorchSim imports for trajectory files these runs never write, is
# replaced by a stand-in (atomopt.bench.matbench.torchsim06.stand_in_for_pytables) instead of 17 MB of wheels.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=.whl
LIMIT=$((64 * 1024 * 1024))
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$BUNDLE" \
    ase==3.29.0 vesin==0.6.2 spglib==2.8.0 matscipy==1.3.1 braceexpand==0.1.7 torch-sim-atomistic==0.6.2 \
    sevenn==0.13.0
python3 - "$BUNDLE" <<'EOF'
"""sevenn's wheel without what SevenNet-0 does not use; its RECORD keeps the files that stay."""
import sys, zipfile
from pathlib import Path

bundle = Path(sys.argv[1])
wheel = next(bundle.glob("sevenn-*.whl"))
keep_model = "SevenNet_0__11Jul2024/"  # what sevenn's "7net-0" loads


def dropped(name: str) -> bool:
    model = "/pretrained_potentials/" in name and name.endswith(".pth") and keep_model not in name
    return model or "pair_d3" in name or "/pair_e3gnn/" in name


slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
    for item in source.infolist():
        if dropped(item.filename):
            continue
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(line for line in lines if not dropped(line.split(",")[0])) + "\n").encode()
        target.writestr(item, data)
print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB -> {slim.stat().st_size / 1e6:.1f} MB (SevenNet-0 only)")
slim.replace(wheel)
EOF
bundle=$(du -cb "$BUNDLE"/*.whl | tail -1 | cut -f1)
tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null \
    | awk -F'\t' '$2 == "total" {s += $1} END {print s}')
echo "bundle $((bundle / 1000000)) MB + working tree $((tree / 1000000)) MB = $(((bundle + tree) / 1000000)) MB" \
    "(a call carries at most $((LIMIT / 1000000)) MB)"
if ((bundle + tree > LIMIT)); then
    echo "too large to travel in one call" >&2
    exit 1
fi
