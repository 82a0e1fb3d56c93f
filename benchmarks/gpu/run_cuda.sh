#!/usr/bin/env bash
# The batched-relaxation benchmarks on a CUDA machine, in one go (results to benchmarks/results/*_cuda.*).
#
#   bash benchmarks/gpu/run_cuda.sh [OUT]     (OUT: folder that receives copies of the results and the log)
#
# Needs torch with CUDA, ase, sevenn, vesin and, for the TorchSim rows, torch-sim-atomistic 0.3.0 with
# vesin-torch. TorchSim 0.3.0's SevenNet wrapper needs sevenn < 0.13 (it imports sevenn.calculator's
# torch_script_type, removed in 0.13): both methods then run on the same sevenn 0.12.1 and the same weights.
# SITE, if set, is a folder of pure-Python packages put first on PYTHONPATH (for a machine without an index).
set -u
OUT=${1:-/tmp/atomopt-cuda}
mkdir -p "$OUT"
export PYTHONPATH=${SITE:+$SITE:}$PWD PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, ase, sevenn, e3nn; print('torch', torch.__version__, 'ase', ase.__version__, 'sevenn', sevenn.__version__, 'e3nn', e3nn.__version__)"
  # 1. Same protocol as the CPU table: 24 mixed crystals, ASE FIRE / Frankenstein sequential, engine at 1-128.
  timeout 200 python3 benchmarks/batched_relax.py --device cuda --n 24 --capacities 1 8 32 128 \
      --tag batched_relax_cuda
  cp benchmarks/results/batched_relax_cuda.* "$OUT"/
  # 2. Throughput against TorchSim's batched FIRE: 512 crystals, same capacity in atoms for both.
  timeout 300 python3 benchmarks/batched_relax.py --device cuda --n 512 --capacity-metric atoms \
      --capacities 512 2048 --methods torchsim-fire --tag batched_vs_torchsim_cuda
  cp benchmarks/results/batched_vs_torchsim_cuda.* "$OUT"/
} 2>&1 | grep -v -i "warning" | tee "$OUT/run_cuda.log"
