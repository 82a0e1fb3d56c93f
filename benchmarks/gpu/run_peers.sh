#!/usr/bin/env bash
# atomopt's batched engine against today's batched peers on a CUDA machine: the Matbench-protocol proxy (160
# structures, SevenNet-0, cell free, fmax 0.05 / 0.02 / 0.01, 500 steps), the same structures, model weights and
# capacity in atoms for every method. Rows: atomopt's SafeLBFGS (its default, H⁰ from the bond-form preconditioner,
# whose neighbour lists run on the CPU: its GPU cost is the open question; and without it, safelbfgs-none) and
# Frankenstein; TorchSim 0.6's batched FIRE,
# L-BFGS and BFGS (ts.optimize with its InFlightAutoBatcher, natively: the GPU machine's Python is >= 3.12);
# NVIDIA nvalchemi-toolkit-ops's batched L-BFGS and FIRE2 Warp kernels. Force calls, failures, structures/s and the
# share of wall time outside the model (model calls synchronised), each row measured in the same run; then
# benchmarks/batched_relax.py's throughput table of the same rows at 512 and CAPACITY atoms (fmax 0.05).
#
#   PEERS_ENV=/path/to/venv bash benchmarks/gpu/run_peers.sh [OUT] [CAPACITY]
#
# PEERS_ENV: one environment with torch (CUDA), atomopt (pip install -e .; it needs vesin), sevenn, torch-sim-atomistic 0.6.x and
# nvalchemi-toolkit-ops (default: the active Python's). Without an index on the machine, install them from wheels
# carried along (pip install --no-index --find-links WHEELS ...) before running. CAPACITY: atoms per model call for
# every batched method (default 2048). Results: benchmarks/results/matbench_peers_cuda.{jsonl,json,md,png},
# batched_relax_cuda_peers.{json,md} and the log, copied to OUT.
set -u
OUT=${1:-/tmp/atomopt-peers}
CAPACITY=${2:-2048}
PEERS_ENV=${PEERS_ENV:-$(python3 -c 'import sys; print(sys.prefix)')}
PY="$PEERS_ENV/bin/python"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WARP_CACHE_PATH=${WARP_CACHE_PATH:-$OUT/warp-cache}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, sevenn, torch_sim, nvalchemiops; print(sys.version.split()[0], 'torch', torch.__version__, 'sevenn', sevenn.__version__, 'torch-sim', torch_sim.__version__)"
  # the peers' rows run in PEERS_ENV (given as their environment: nothing is installed), atomopt's in the same Python
  timeout 3000 "$PY" -m atomopt.cli bench matbench --model sevennet-0 --device cuda --capacity "$CAPACITY" \
      --methods safelbfgs safelbfgs-none frankenstein torchsim-fire torchsim-lbfgs torchsim-bfgs nvalchemi-lbfgs \
      nvalchemi-fire2 --reference safelbfgs --torchsim-env "$PEERS_ENV" --nvalchemi-env "$PEERS_ENV" --workers 1 \
      --tag matbench_peers_cuda -q
  cp benchmarks/results/matbench_peers_cuda.* "$OUT"/
  # throughput at two capacities, the same runners at fmax 0.05 (structures/s, time outside the model)
  timeout 2400 "$PY" benchmarks/batched_relax.py --device cuda --capacities 512 "$CAPACITY" \
      --methods safelbfgs frankenstein torchsim-fire torchsim-lbfgs nvalchemi-lbfgs nvalchemi-fire2 \
      --torchsim-env "$PEERS_ENV" --nvalchemi-env "$PEERS_ENV" --tag batched_relax_cuda_peers
  cp benchmarks/results/batched_relax_cuda_peers.* "$OUT"/
} 2>&1 | grep -v -i "warning" | tee "$OUT/run_peers.log"
