#!/usr/bin/env bash
# Throughput of atomopt's batched Frankenstein against TorchSim's batched FIRE on the Matbench benchmark's
# WBM-like proxy set (160 structures, SevenNet-0, cell free, fmax 0.05 eV/Å, 500 steps), same model and the
# same capacity in atoms for both, on a CUDA machine: the GPU at 512 and 2048 atoms and, at the same time on
# other cores of the same machine, its CPU at 128 atoms (4 torch threads each). The CPU leg needs about 8 minutes
# (the engine took 167 s on an H100 machine's Xeon; TorchSim more than the 293 s left of its first timeout).
#
#   bash benchmarks/gpu/run_proxy_throughput.sh [OUT]     (OUT receives the results and the log)
#
# Needs what benchmarks/gpu/run_cuda.sh needs (torch with CUDA, ase, sevenn 0.12.1, vesin, torch-sim-atomistic
# 0.3.0, vesin-torch); SITE, if set, is a folder of pure-Python packages put first on PYTHONPATH.
set -u
OUT=${1:-/tmp/atomopt-cuda}
mkdir -p "$OUT"
export OUT PYTHONPATH=${SITE:+$SITE:}$PWD PYTHONUNBUFFERED=1
run() { python3 benchmarks/batched_relax.py --set proxy --capacity-metric atoms --methods torchsim-fire --out "$OUT" "$@"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E "^Model name|^CPU\(s\)"
  python3 -c "import torch, ase, sevenn, e3nn; print('torch', torch.__version__, 'ase', ase.__version__, 'sevenn', sevenn.__version__, 'e3nn', e3nn.__version__)"
  taskset -c 8-15 timeout 900 bash -c "$(declare -f run); run --device cpu --threads 4 --capacities 128 \
      --tag proxy_vs_torchsim_cpu" &
  taskset -c 0-7 timeout 230 bash -c "$(declare -f run); run --device cuda --capacities 512 --tag proxy_vs_torchsim_cuda_512"
  taskset -c 0-7 timeout 230 bash -c "$(declare -f run); run --device cuda --capacities 2048 --tag proxy_vs_torchsim_cuda_2048"
  wait
} 2>&1 | grep -v -i "warning" | tee "$OUT/run_proxy_throughput.log"
