"""A real multi-node Ray cluster (``ray start`` head + worker nodes) on loopback only.

Why a network namespace: Ray rewrites a loopback address to the machine's own address
(``ray._private.services.resolve_ip_for_localhost``: ``ray start --node-ip-address=127.0.0.1``
and ``--address=127.0.0.1:PORT`` both become the first non-loopback address, by design:
ray-project/ray#1556, #26293, #59110). The only switch that stops it,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, also refuses to start a worker node. So the cluster
runs in a private network namespace (``unshare --net``) whose only interface is ``lo``:
there Ray's own resolution finds 127.0.0.1, every socket binds to 127.0.0.1, and no packet
can leave the machine whatever Ray tries (usage stats are off as well).

Every process is started by this module (head, workers, the driver commands through
``nsenter``) in its own session; :meth:`LoopbackCluster.stop` kills exactly those process
groups and then any process left in the namespace (all of which descend from them), by
pid. ``ray stop`` is never used: it would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
HEAD_PORT = 6390
# Brings lo up inside the new namespace, says so, then waits for stdin to close.
_HOLDER = r"""
import fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("16sh", b"lo", 0)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP
print("ready", flush=True)
sys.stdin.read()
"""


class ClusterError(RuntimeError):
    """The loopback cluster could not be set up; the message says what failed."""


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of every cluster process: no usage stats, no proxy, quiet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DISABLE_DOCKER_CPU_WARNING="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class LoopbackCluster:
    """A private network namespace holding a Ray head and worker nodes on 127.0.0.1."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tdr_", dir="/tmp")) if root is None else root
        self.holder: subprocess.Popen[str] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.others: list[subprocess.Popen[bytes]] = []
        self.env = ray_env()
        self.node_env: dict[str, str] = {}
        """Added to `env` for the `ray start` nodes only (e.g. RAY_AUTH_MODE=token)."""

    def use_token(self, token: str = "tdlens-loopback-token-" + "0123456789" * 4) -> None:
        """Token authentication as Ray documents it: the token in ~/.ray/auth_token (HOME
        is this cluster's folder, for every process) and RAY_AUTH_MODE=token on the nodes;
        drivers get no Ray setting."""
        (self.root / ".ray").mkdir(exist_ok=True)
        (self.root / ".ray" / "auth_token").write_text(token)
        self.env["HOME"] = str(self.root)
        self.node_env["RAY_AUTH_MODE"] = "token"

    @property
    def address(self) -> str:
        return f"{HOST}:{HEAD_PORT}"

    # ------------------------------------------------------------------ namespace

    def open(self) -> LoopbackCluster:
        """Create the namespace (needs root, or user namespaces)."""
        for tool in ("unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise ClusterError(f"'{tool}' (util-linux) is needed for the loopback cluster")
        cmd = ["unshare", "--net", sys.executable, "-c", _HOLDER]
        if os.geteuid() != 0:
            cmd[1:1] = ["--user", "--map-root-user"]
        self.holder = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.holder.stdout.readline() if self.holder.stdout else ""
        if line.strip() != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            raise ClusterError(f"cannot create a network namespace: {err.strip() or line}")
        return self

    @property
    def netns(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        base = ["nsenter", f"--net={self.netns}"]
        if os.geteuid() != 0:
            assert self.holder is not None
            base += [f"--user=/proc/{self.holder.pid}/ns/user", "--preserve-credentials"]
        return [*base, "--"]

    def popen(self, args: list[str], log: str, **kw) -> subprocess.Popen[bytes]:
        """Start `args` inside the namespace in its own session, output to root/log."""
        out = open(self.root / log, "ab")
        proc = subprocess.Popen(
            [*self.prefix(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=kw.pop("env", self.env),
            start_new_session=True,
            **kw,
        )
        out.close()
        return proc

    def run(self, args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[str]:
        """Run `args` inside the namespace and wait (its process group is killed on timeout)."""
        proc = subprocess.Popen(
            [*self.prefix(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=kw.pop("env", self.env),
            start_new_session=True,
            **kw,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise ClusterError(f"{args[:3]} timed out after {timeout} s:\n{out}\n{err}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # ------------------------------------------------------------------ nodes

    def _ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def start_head(self, num_cpus: int = 1) -> None:
        """`ray start --head --block` on 127.0.0.1:HEAD_PORT (dashboard off)."""
        temp = self.root / "head"
        temp.mkdir(exist_ok=True)
        self.nodes["head"] = self.popen(
            [
                self._ray(),
                "start",
                "--head",
                "--block",
                f"--node-ip-address={HOST}",
                f"--port={HEAD_PORT}",
                f"--num-cpus={num_cpus}",
                "--include-dashboard=false",
                f"--dashboard-host={HOST}",
                "--disable-usage-stats",
                "--object-store-memory=100000000",
                f"--temp-dir={temp}",
            ],
            "head.log",
            env={**self.env, **self.node_env},
        )
        self.wait_nodes(1)

    def start_worker(self, name: str, num_cpus: int = 1) -> subprocess.Popen[bytes]:
        """`ray start --address=127.0.0.1:HEAD_PORT --block` (a second node)."""
        temp = self.root / name
        temp.mkdir(exist_ok=True)
        before = self.count_nodes()
        proc = self.popen(
            [
                self._ray(),
                "start",
                "--block",
                f"--address={self.address}",
                f"--node-ip-address={HOST}",
                f"--num-cpus={num_cpus}",
                "--disable-usage-stats",
                "--object-store-memory=100000000",
                f"--temp-dir={temp}",
            ],
            f"{name}.log",
            env={**self.env, **self.node_env},
        )
        self.nodes[name] = proc
        self.wait_nodes(before + 1)
        return proc

    def count_nodes(self) -> int:
        """Alive nodes, asked of the head by a driver in the namespace."""
        code = (
            f"import ray;ray.init(address='{self.address}',logging_level='ERROR',"
            "log_to_driver=False);print(sum(n['Alive'] for n in ray.nodes()))"
        )
        env = dict(self.env)
        home = Path(env.get("HOME", Path.home()))
        if "RAY_AUTH_TOKEN_PATH" in env or (home / ".ray" / "auth_token").is_file():
            env["RAY_AUTH_MODE"] = "token"  # an explicit address never enables it by itself
        res = self.run([sys.executable, "-c", code], timeout=90, env=env)
        if res.returncode != 0:
            return 0
        return int(res.stdout.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    log = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise ClusterError(f"ray node '{name}' exited ({proc.returncode}):\n{log}")
            if self.count_nodes() >= n:
                return
            time.sleep(1.0)
        raise ClusterError(f"the cluster did not reach {n} node(s) in {timeout} s")

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of a node (its session: raylet, agents and the Ray
        workers, which have process groups of their own): a lost machine."""
        proc = self.nodes.pop(name)
        for pid in self.session(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def session(self, sid: int) -> list[int]:
        """The processes of the namespace in session `sid` (a node started by this object)."""
        found = []
        for pid in self.pids():
            try:
                if os.getsid(pid) == sid:
                    found.append(pid)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    # ------------------------------------------------------------------ inspection

    def pids(self) -> list[int]:
        """Every process in the namespace (all started by this object)."""
        if self.holder is None:
            return []
        try:
            ns = os.stat(self.netns).st_ino
        except OSError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(entry / "ns" / "net").st_ino == ns:
                    found.append(int(entry.name))
            except OSError:
                continue
        return [p for p in found if p != self.holder.pid]

    def sockets(self) -> str:
        """`ss -tanp` inside the namespace (every TCP socket: listeners and connections)."""
        return self.run(["ss", "-tanp"], timeout=30).stdout

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Kill every process this cluster started, by pid, then the namespace holder."""
        for proc in [*self.nodes.values(), *self.others]:
            _kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(p.poll() is None for p in self.nodes.values()):
            time.sleep(0.2)
        for proc in [*self.nodes.values(), *self.others]:
            _kill_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):  # strays (reparented daemons) live in the namespace too
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        if self.holder is not None:
            if self.holder.stdin:
                self.holder.stdin.close()
            try:
                self.holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
