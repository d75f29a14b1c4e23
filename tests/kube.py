"""A real Kubernetes control plane on loopback for the tests: Debian's etcd with
kube-apiserver and kube-controller-manager 1.20 (../shared/tools/kube/start.sh). There is
no scheduler and no kubelet: Pods stay Pending unless a test patches their status, as a
kubelet would."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.services import ServiceUnavailable, Started

HERE = Path(__file__).resolve().parent


def tools_dir() -> Path:
    """Where start.sh lives: TUNELAB_KUBE_TOOLS, else ../shared/tools/kube beside the
    checkout, else the workplace's shared folder."""
    candidates = [
        os.environ.get("TUNELAB_KUBE_TOOLS"),
        HERE.parent.parent / "shared" / "tools" / "kube",
        "/work/shared/tools/kube",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "start.sh").exists():
            return Path(candidate)
    raise ServiceUnavailable(
        "no Kubernetes test control plane: set TUNELAB_KUBE_TOOLS to the folder of start.sh"
    )


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> int:
    """An API port P whose companions (etcd on P+17000 and P+17001, the controller
    manager on P+3814) are free too."""
    for _ in range(50):
        port = random.randint(16_000, 28_000)
        if all(_free(p) for p in (port, port + 17_000, port + 17_001, port + 3_814)):
            return port
    raise ServiceUnavailable("no free ports for a Kubernetes control plane")


def start_control_plane() -> Started:
    """Started.url is the kubeconfig's path; stop() stops every process and removes
    the state."""
    tools = tools_dir()
    state = Path(tempfile.mkdtemp(prefix="tunelab-kube-"))
    result = subprocess.run(
        ["bash", str(tools / "start.sh"), str(state / "plane"), str(_ports())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    kubeconfig = state / "plane" / "kubeconfig"

    def stop() -> None:
        subprocess.run(["bash", str(tools / "stop.sh"), str(state / "plane")], capture_output=True)
        subprocess.run(["rm", "-rf", str(state)])

    if result.returncode != 0 or not kubeconfig.exists():
        stop()
        raise ServiceUnavailable(f"the control plane did not start: {result.stderr[-2000:]}")
    return Started(url=str(kubeconfig), stop=stop)
