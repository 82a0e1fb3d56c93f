"""``python -m atomopt.bench.matbench --torchsim-worker SPEC``: TorchSim's rows, run inside TorchSim's environment."""

import sys

from atomopt.bench.matbench.torchsim import _torchsim_worker

if sys.argv[1:2] == ["--torchsim-worker"]:
    raise SystemExit(_torchsim_worker(sys.argv[2]))
raise SystemExit("run it as: atomopt bench matbench ...")
