"""A Flower deployment on this machine for the tests: one SuperLink, some SuperNodes.

Every process is started in its own session (process group); :meth:`LocalDeployment.stop`
stops those groups and every process they started (SuperExec, ServerApp and ClientApp
processes), first with SIGTERM, then SIGKILL. Use it as a context manager so that a failing
test stops them too. Nothing waits without a limit.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {limit} s")


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("plural test CA"))
        .issuer_name(name("plural test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alt, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(key, paths["key"])
    return paths


def _children(pids: set[int]) -> set[int]:
    """``pids`` and every process descended from them (read from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(pids)
    grew = True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format: (private key file, public key file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


class LocalDeployment:
    """``flower-superlink`` and one ``flower-supernode`` per node config, on localhost."""

    def __init__(
        self, root: Path, node_configs: Sequence[str], *, tls: bool = False, auth: bool = False
    ) -> None:
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS")
        self.root = root
        self.node_configs = list(node_configs)
        self.tls = tls
        self.auth = auth
        self.port = free_port()
        self.home = root / "flwr-home"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }

    def _start(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.root / log).open("wb") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.processes.append(process)
        return process

    def start(self) -> LocalDeployment:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        security = ["--insecure"]
        node_security = ["--insecure"]
        connection = "insecure = true"
        if self.tls:
            certs = make_certificates(self.root / "certs")
            security = [
                f"--ssl-certfile={certs['cert']}",
                f"--ssl-keyfile={certs['key']}",
                f"--ssl-ca-certfile={certs['ca']}",
            ]
            node_security = [f"--root-certificates={certs['ca']}"]
            connection = f'root-certificates = "{certs["ca"]}"'
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\n{connection}\n'
        )
        link = self._start(
            [
                str(BIN / "flower-superlink"),
                *security,
                f"--port={self.port}",
                "--disable-runtime-dependency-installation",
                *(["--enable-supernode-auth"] if self.auth else []),
            ],
            "superlink.log",
        )
        wait_for_port(self.port, link, 120)
        for k, node_config in enumerate(self.node_configs):
            keys = self.register_node(k) if self.auth else []
            node = self._start(
                [
                    str(BIN / "flower-supernode"),
                    *node_security,
                    *keys,
                    f"--superlink=127.0.0.1:{self.port}",
                    f"--port={free_port()}",
                    f"--node-config={node_config}",
                ],
                f"supernode-{k}.log",
            )
            self.nodes.append(node)
        return self

    def register_node(self, index: int) -> list[str]:
        """An EC key pair for node ``index`` (as ``ssh-keygen -t ecdsa -b 384`` makes), its
        public key registered with the SuperLink; the SuperNode's argument for it."""
        private, public = make_node_keys(self.root / "keys", f"node{index}")
        done = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", str(public), "local"],
            env=self.env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed: {done.stdout!r}{done.stderr!r}")
        return [f"--auth-supernode-private-key={private}"]  # Flower derives the public key

    def submit(self, app: Path) -> str:
        """Start the Flower App in ``app`` (``flwr run``); its run id."""
        done = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "local", "--format", "json"],
            env=self.env,
            capture_output=True,
            timeout=180,
            check=False,
        )
        output = done.stdout.decode()
        if done.returncode != 0:
            raise RuntimeError(f"flwr run failed: {output}{done.stderr.decode()}")
        return str(json.loads(output)["run-id"])

    def status(self, run_id: str) -> str:
        done = subprocess.run(
            [str(BIN / "flwr"), "ls", "local", "--run-id", run_id, "--format", "json"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        with contextlib.suppress(ValueError, KeyError, IndexError):
            return str(json.loads(done.stdout.decode())["runs"][0]["status"])
        return "unknown"

    def logs(self, run_id: str) -> str:
        """The ServerApp's log of the run (``flwr log --show``), for failure messages."""
        done = subprocess.run(
            [str(BIN / "flwr"), "log", run_id, "local", "--show"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.stdout.decode()[-6000:] + done.stderr.decode()[-2000:]

    def wait(self, run_id: str, limit: float) -> str:
        """The run's final status ('finished:completed', ...), waiting at most ``limit`` s."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} not finished after {limit} s: {self.status(run_id)}")

    def kill_node(self, index: int) -> None:
        """Stop SuperNode ``index`` and everything it started, at once (SIGKILL)."""
        self._signal(_children({self.nodes[index].pid}), signal.SIGKILL)
        self.nodes[index].wait(timeout=30)

    @staticmethod
    def _signal(pids: set[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop(self) -> None:
        """Stop every process this deployment started (and their children)."""
        pids = _children({p.pid for p in self.processes if p.poll() is None})
        self._signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self._signal(_children(pids), signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def alive(self) -> list[int]:
        """Processes started by this deployment (or their children) still running."""
        pids = _children({p.pid for p in self.processes})
        return [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]

    def __enter__(self) -> LocalDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True
