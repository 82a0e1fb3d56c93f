"""``python -m atomopt.bench.hea --worker SPEC``: one minimization of the HEA benchmark, in a process of its own."""

import json
import sys

from atomopt.bench.hea.run import run_worker

if sys.argv[1:2] == ["--worker"]:
    with open(sys.argv[2]) as spec:
        raise SystemExit(run_worker(json.load(spec)))
raise SystemExit("run it as: atomopt bench hea ...")
