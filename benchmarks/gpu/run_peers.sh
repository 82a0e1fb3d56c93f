#!/usr/bin/env bash
# atomopt's batched engine against today's batched peers on a CUDA machine: the Matbench-protocol proxy (160
# structures, SevenNet-0, cell free, fmax 0.05 / 0.02 / 0.01, 500 steps), the same structures, model weights and
# capacity in atoms for every method. Rows: atomopt's SafeLBFGS (its default, H⁰ from the bond-form preconditioner,
# whose neighbour lists run on the CPU: its GPU cost is the open question; and without it, safelbfgs-none) and
# Frankenstein; TorchSim 0.6's batched FIRE, L-BFGS and BFGS (ts.optimize with its InFlightAutoBatcher, natively:
# the GPU machine's Python is >= 3.12); NVIDIA nvalchemi-toolkit-ops's batched L-BFGS and FIRE2 Warp kernels where
# nvalchemiops can be imported. Force calls, failures, structures/s and the share of wall time outside the model
# (model calls synchronised), each row measured in the same run; then benchmarks/batched_relax.py's throughput table
# of the same rows at CAPACITY atoms (fmax 0.05), if time is left.
#
# On a lent GPU machine (one command of at most 10 minutes, nothing fetched there): make the wheels here first,
#   bash benchmarks/gpu/make_device_bundle.sh          # .whl/, checked to travel with the repository
# then run, carrying .whl:  bash benchmarks/gpu/run_peers.sh "$OUT"   (the whole script keeps under 9 minutes).
# The nvalchemi rows need warp-lang (149 MB), which cannot travel: they are left out there, and said so.
#
#   [PEERS_ENV=/path/to/venv] bash benchmarks/gpu/run_peers.sh [OUT] [CAPACITY]
#
# PEERS_ENV: the environment whose Python runs every row (default: the active python3's). With .whl/ present its
# wheels are installed into /tmp/site first and put on PYTHONPATH, with this checkout (atomopt is not installed).
# CAPACITY: atoms per model call for every batched method (default 2048). Results:
# benchmarks/results/matbench_peers_cuda.{jsonl,json,md,png}, batched_relax_cuda_peers.{json,md} and the log,
# copied to OUT.
set -u
OUT=${1:-/tmp/atomopt-peers}
CAPACITY=${2:-2048}
PEERS_ENV=${PEERS_ENV:-$(python3 -c 'import sys; print(sys.prefix)')}
PY="$PEERS_ENV/bin/python3"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WARP_CACHE_PATH=${WARP_CACHE_PATH:-/tmp/warp-cache}
START=$SECONDS
{
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, e3nn, sevenn, torch_sim, ase, vesin; print(sys.version.split()[0], 'torch', torch.__version__, 'e3nn', e3nn.__version__, 'sevenn', sevenn.__version__, 'torch-sim', torch_sim.__version__, 'ase', ase.__version__)" \
      || exit 1
  METHODS="safelbfgs safelbfgs-none frankenstein torchsim-fire torchsim-lbfgs torchsim-bfgs"
  if "$PY" -c "import nvalchemiops" 2>/dev/null; then
    METHODS="$METHODS nvalchemi-lbfgs nvalchemi-fire2"
  else
    echo "nvalchemiops cannot be imported here (warp-lang's wheel, 149 MB, cannot travel): no nvalchemi rows"
  fi
  # the peers' rows run in PEERS_ENV (given as their environment: nothing is installed), atomopt's in the same Python
  timeout 420 "$PY" -m atomopt.cli bench matbench --model sevennet-0 --device cuda --capacity "$CAPACITY" \
      --methods $METHODS --reference safelbfgs --torchsim-env "$PEERS_ENV" --nvalchemi-env "$PEERS_ENV" \
      --workers 1 --tag matbench_peers_cuda -q
  cp benchmarks/results/matbench_peers_cuda.* "$OUT"/
  # throughput at CAPACITY, the same runners at fmax 0.05 (structures/s, time outside the model), in what is left
  LEFT=$((530 - (SECONDS - START)))
  if ((LEFT > 60)); then
    timeout "$LEFT" "$PY" benchmarks/batched_relax.py --device cuda --capacities "$CAPACITY" \
        --methods ${METHODS// safelbfgs-none/} --torchsim-env "$PEERS_ENV" --nvalchemi-env "$PEERS_ENV" \
        --tag batched_relax_cuda_peers
    cp benchmarks/results/batched_relax_cuda_peers.* "$OUT"/
  else
    echo "no time left for the throughput table ($LEFT s)"
  fi
} 2>&1 | grep -v -i "warning" | tee "$OUT/run_peers.log"
