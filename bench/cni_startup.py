"""Start-up cost of the flannel CNI plugin: median wall time of N runs, ours vs Go's bridge plugin.

The plugin is exec'd per pod and per command, so interpreter start-up and imports are most of its cost.
Measured like hyperfine: N sequential runs of each command after a few warm-up runs, median reported.

* ``VERSION``: start-up and imports only, against ``/usr/lib/cni/bridge`` VERSION in the same run.
* ``DEL`` without a saved config: start-up + config parsing, the cheapest real command path.

Usage: python3 bench/cni_startup.py [-n 50] [--bridge /usr/lib/cni/bridge]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyflannel.cni import install


def median_ms(cmd: Sequence[str], env: Mapping[str, str], stdin: bytes, runs: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        subprocess.run(cmd, input=stdin, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="measured runs per command")
    parser.add_argument("--bridge", default="/usr/lib/cni/bridge")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pfcni-bench-") as tmp:
        ours = install.install(tmp)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        version_env = {**base, "CNI_COMMAND": "VERSION"}
        del_env = {**base, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "bench", "CNI_IFNAME": "eth0",
                   "CNI_PATH": tmp}
        del_conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "flannel",
                               "dataDir": os.path.join(tmp, "data")}).encode()
        rows = [
            ("flannel (pyflannel) VERSION", median_ms([ours], version_env, b"", args.n)),
            (f"{os.path.basename(args.bridge)} (Go) VERSION", median_ms([args.bridge], version_env, b"", args.n)),
            ("flannel (pyflannel) DEL, nothing saved", median_ms([ours], del_env, del_conf, args.n)),
            ("python3 -IS -c pass (floor)", median_ms([sys.executable, "-IS", "-c", "pass"], base, b"", args.n)),
        ]
    for label, ms in rows:
        print(f"{label:42s} {ms:7.1f} ms  (median of {args.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
