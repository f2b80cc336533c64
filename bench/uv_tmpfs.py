"""Interleaved cold/warm ``uv pip install`` runs with everything on tmpfs.

The shared harness (../shared/bench) installs into /tmp on this VM's disk, and
its uv figures follow the disk more than any server (docs/performance.md,
"Noise").  This script takes the disk out: the server's data directory and the
install target live in /dev/shm, so what remains is the server's own cost.
It compares one or more pypicache builds (each a ``twistd`` path) with uv
installing straight from the fixture's nginx, interleaved, and prints medians.

Uses the harness's fixture and client venv (run the harness's ``--setup`` once):

    python3 bench/uv_tmpfs.py --pairs 8 base=/tmp/base-venv/bin/twistd new=.venv/bin/twistd

Every process it starts is stopped by PID; it sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
CLIENT = Path("/tmp/bench-venv-client")
REQUIREMENTS = HARNESS / "requirements.txt"
SHM = Path("/dev/shm/pypicache-uv-tmpfs")
CONFIG = """[server]
listen = "tcp:{port}:interface=127.0.0.1"
data_dir = "{data}"
access_log = false

[upstream]
provider = "simple"
url = "{upstream}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    # uv's --no-cache still unpacks into a temporary cache under TMPDIR.
    (SHM / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(PIP_CONFIG_FILE=os.devnull, UV_NO_CONFIG="1", NO_PROXY="127.0.0.1", TMPDIR=str(SHM / "tmp"))
    return env


def wait_ok(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def cpu_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def uv_install(index: str) -> float:
    target = SHM / "target"
    shutil.rmtree(target, ignore_errors=True)
    cmd = [CLIENT / "bin" / "uv", "pip", "install", "--no-cache", "--python", CLIENT / "bin" / "python",
           "--target", target, "-r", REQUIREMENTS, "--index-url", index, "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=client_env(), stdout=subprocess.DEVNULL, timeout=600)
    took = time.perf_counter() - t0
    n = sum(1 for p in target.iterdir() if p.name.endswith(".dist-info"))
    if n != 30:
        raise RuntimeError(f"installed {n} distributions, expected 30")
    shutil.rmtree(target, ignore_errors=True)
    return took


def run_server(twistd: str, upstream: str) -> dict[str, float]:
    port = free_port()
    data = SHM / "data"
    shutil.rmtree(data, ignore_errors=True)
    conf = SHM / "pypicache.toml"
    conf.write_text(CONFIG.format(port=port, data=data, upstream=upstream))
    t0 = time.perf_counter()
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "--logfile", str(SHM / "server.log"), "pypicache",
                             "--config", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        index = f"http://127.0.0.1:{port}/simple/"
        wait_ok(index)
        out = {"ready": time.perf_counter() - t0}
        u0, s0 = cpu_seconds(proc.pid)
        out["cold"] = uv_install(index)
        u1, s1 = cpu_seconds(proc.pid)
        out["warm"] = uv_install(index)
        out["cold_user"], out["cold_sys"] = u1 - u0, s1 - s0
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="NAME=PATH-TO-TWISTD")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--port", type=int, default=18097, help="the fixture's nginx")
    args = ap.parse_args()
    builds = dict(b.split("=", 1) for b in args.builds)
    SHM.mkdir(parents=True, exist_ok=True)
    serve = subprocess.Popen([sys.executable, HARNESS / "upstream.py", "serve", "--port", str(args.port),
                              "--max-seconds", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{args.port}/simple/"
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ["nginx", *builds]}
    try:
        wait_ok(upstream)
        for i in range(args.pairs):
            order = ["nginx", *builds] if i % 2 == 0 else [*reversed(builds), "nginx"]
            for name in order:
                if name == "nginx":
                    r = {"cold": uv_install(upstream), "warm": uv_install(upstream)}
                else:
                    r = run_server(builds[name], upstream)
                results[name].append(r)
                print(f"pair {i} {name}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)
        shutil.rmtree(SHM, ignore_errors=True)
    print("\nmedians (s):")
    ref = {k: statistics.median(r[k] for r in results["nginx"]) for k in ("cold", "warm")}
    for name, rows in results.items():
        keys = rows[0].keys()
        med = {k: statistics.median(r[k] for r in rows) for k in keys}
        ratio = " ".join(f"{k}×{med[k] / ref[k]:.2f}" for k in ("cold", "warm"))
        print(f"  {name:8} " + " ".join(f"{k}={v:.3f}" for k, v in med.items()) + f"   {ratio}")


if __name__ == "__main__":
    main()
