"""Running the experiment on Flower's Deployment Engine on this machine: SuperLink + one SuperNode per hospital.

``python scripts/deploy_local.py [overrides]`` (or ``python -m pipeline.run deployment=local ...``)
does what a real study does across sites, on loopback addresses only:

1. a workspace with development TLS certificates (:mod:`pipeline.certificates`), one
   authentication key pair per hospital, the CKKS key files (a separate process), and each
   hospital's own data file cut from the data set exactly as the simulation partitions it;
2. ``flower-superlink`` with TLS and SuperNode authentication; each hospital's public key is
   registered (``flwr supernode register``); one ``flower-supernode`` per hospital with its own
   ``--node-config`` (hospital id, data folder, secret CKKS context, state folder);
3. ``flwr run`` of this project with the resolved Hydra config as ``--run-config`` (TOML), the
   server getting only the public context; progress lines are echoed from the SuperLink's log;
4. the consortium step (decrypt and test the final model) as in the simulation, then every
   process started here is stopped, on success and on failure alike.

Each process runs in its own process group and is stopped with its children; a last sweep kills
anything still carrying this workspace's ``FLWR_HOME`` in its environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from omegaconf import DictConfig

from pipeline.engines.certificates import NODE_KEY, NODE_PUBLIC_KEY, make_certificates, make_node_key
from pipeline.engines.run_config import node_config_arg, run_config_toml
from pipeline.engines.workspace import private_folder, private_lock, write_owner
from pipeline.errors import RunFailed
from pipeline.flower.context import (
    DATA_ROOT_KEY,
    MAX_LIFETIME_KEY,
    PARTITION_KEY,
    ROSTER_KEY,
    SECRET_CONTEXT_KEY,
    SERVICE_KEY,
    SIGNING_KEY_KEY,
    STATE_DIR_KEY,
)
from pipeline.reporting.atomic import write_atomic
from pipeline.reporting.recorder import CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics
from pipeline.secagg.params import ROSTER_FILE

log = logging.getLogger("fedmed")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: pyproject.toml, the Flower app
CONNECTION = "fedmed-local"  # the SuperLink connection's name in $FLWR_HOME/config.toml
# how often a SuperExec asks for work to launch (Flower's default 1 s waits up to a second a message)
TASK_POLL_SECONDS = "0.1"
SUPERLINK_DB = "superlink.db"
STATUS_SECONDS = 30.0  # how often a waiting deployment asks the SuperLink for the run's status anyway


def _die_with_parent() -> None:
    """In a child, before exec: be killed when the process that started it dies, even by SIGKILL."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def processes_with_environment(fragment: str) -> list[int]:
    """PIDs of live processes (not this one) whose environment contains ``fragment``."""
    needle = fragment.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes() + b"\0"
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env:
            found.append(int(entry))
    return found


def flwr_processes(flwr_home: Path) -> list[int]:
    """PIDs of live processes whose environment carries ``FLWR_HOME=<flwr_home>`` (ours and their children)."""
    return processes_with_environment(f"\0FLWR_HOME={flwr_home}\0")


@dataclass
class LocalDeployment:
    """A SuperLink and SuperNodes on loopback, started as subprocesses; ``stop()`` ends them all.

    Use as a context manager. ``insecure=True`` (development only) drops TLS and node
    authentication; otherwise every connection is TLS with this workspace's CA and only
    SuperNodes whose public key was registered may join.
    """

    workspace: Path
    host: str = "127.0.0.1"
    port: int = 0
    insecure: bool = False
    startup_timeout: float = 60.0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).resolve()
        self.flwr_home = self.workspace / "flwr_home"
        self.logs = self.workspace / "logs"
        self.certs = self.workspace / "certs"
        self.port = self.port or free_port(self.host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.crt"

    def env(self) -> dict[str, str]:
        """Environment of every Flower process: this workspace's FLWR_HOME, no telemetry, this venv first."""
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(self.flwr_home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_SUPEREXEC_TASK_POLL_INTERVAL=TASK_POLL_SECONDS,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=f"{PROJECT_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep),
        )
        return env

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        try:
            self.start_superlink()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start ``cmd`` in its own process group, logging to ``logs/<name>.log``; it dies with this process."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workspace,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.processes[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " / ".join(line.strip() for line in text[-lines:])

    def start_superlink(self) -> None:
        """Certificates (unless insecure), the ``flwr`` connection file, then the SuperLink; wait until it listens."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        connection: dict = {"address": self.address}
        cmd = [
            "flower-superlink",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
            "--database",
            str(self.workspace / SUPERLINK_DB),
        ]
        if self.insecure:
            log.warning("deployment.insecure=true: connections are NOT encrypted and SuperNodes are not authenticated")
            cmd.append("--insecure")
            connection["insecure"] = True
        else:
            certs = make_certificates(self.certs, [self.host, "localhost"])
            cmd += ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert)]
            cmd += ["--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth"]
            connection["root-certificates"] = str(certs.ca_cert)
        config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
        write_atomic(self.flwr_home / "config.toml", tomli_w.dumps(config))
        proc = self._spawn("superlink", cmd)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RunFailed(f"the SuperLink exited with code {proc.returncode}: {self.log_tail('superlink')}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                log.info("SuperLink listening on %s (%s)", self.address, "insecure" if self.insecure else "TLS")
                return
            time.sleep(0.3)
        raise RunFailed(f"the SuperLink did not listen on {self.address} within {self.startup_timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this SuperLink (its own FLWR_HOME)."""
        return subprocess.run(
            ["flwr", *args], capture_output=True, text=True, env=self.env(), cwd=self.workspace, timeout=timeout
        )

    def register(self, public_key: Path, name: str) -> None:
        """Register a SuperNode's public key (no-op when insecure: there is no authentication)."""
        if self.insecure:
            return
        done = self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name, "--format", "json")
        if done.returncode != 0 or '"success": false' in done.stdout:
            raise RunFailed(f"registering {name}'s key failed: {(done.stdout + done.stderr).strip()[-300:]}")

    def start_service(self, name: str, socket_path: Path) -> subprocess.Popen:
        """Start a hospital's long-running service (:mod:`pipeline.flower.hospital_service`); wait until it listens."""
        cmd = [sys.executable, "-m", "pipeline.flower.hospital_service", "--socket", str(socket_path)]
        proc = self._spawn(name, cmd)
        deadline = time.monotonic() + self.startup_timeout
        while not socket_path.exists():
            if proc.poll() is not None:
                raise RunFailed(f"{name} exited with code {proc.returncode}: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RunFailed(f"{name} did not listen at {socket_path} within {self.startup_timeout:.0f} s")
            time.sleep(0.1)
        return proc

    def start_supernode(
        self,
        name: str,
        node_config: dict[str, str | int],
        private_key: Path | None,
        root_certificates: Path | None,
        max_wait: float = 60,
    ) -> subprocess.Popen:
        """Start one ``flower-supernode`` (its ClientApp API on a free loopback port)."""
        cmd = [
            "flower-supernode",
            "--superlink",
            self.address,
            "--node-config",
            node_config_arg(node_config),
            "--host",
            self.host,
            "--port",
            str(free_port(self.host)),
            "--max-wait-time",
            str(max_wait),
        ]
        if self.insecure:
            cmd.append("--insecure")
        else:
            if root_certificates is not None:
                cmd += ["--root-certificates", str(root_certificates)]
            if private_key is not None:
                cmd += ["--auth-supernode-private-key", str(private_key)]
        return self._spawn(name, cmd)

    def connected_nodes(self) -> list[dict]:
        """The SuperLink's view of the SuperNodes (``flwr supernode list``)."""
        done = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        if done.returncode != 0:
            raise RunFailed(f"flwr supernode list failed: {(done.stdout + done.stderr).strip()[-300:]}")
        return list(json.loads(done.stdout).get("nodes", []))

    def submit(self, run_config: Path) -> int:
        """``flwr run`` this project with ``run_config``; return the run id."""
        done = self.flwr("run", str(PROJECT_ROOT), CONNECTION, "--run-config", str(run_config), "--format", "json")
        try:
            reply = json.loads(done.stdout)
        except json.JSONDecodeError:
            reply = {}
        if done.returncode != 0 or not reply.get("success", False) or "run-id" not in reply:
            raise RunFailed(f"flwr run failed: {(done.stdout + done.stderr).strip()[-400:]}")
        return int(reply["run-id"])

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it (e.g. ``running``, ``finished:completed``)."""
        done = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        if done.returncode != 0:
            return "unknown"
        runs = json.loads(done.stdout).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def wait(
        self,
        run_id: int,
        timeout: float,
        on_poll: Callable[[], None] | None = None,
        maybe_done: Callable[[], bool] | None = None,
    ) -> str:
        """Poll until the run finishes (calling ``on_poll`` each time, for progress); return the final status.

        Asking the SuperLink (``flwr ls``) starts a Python process, seconds of CPU that the
        hospitals need: it is asked when ``maybe_done()`` says the run may have ended, and every
        :data:`STATUS_SECONDS` otherwise (every poll without ``maybe_done``).

        Raises:
            RunFailed: a process started here died, or the run outlasted ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        status, asked = "unknown", -math.inf
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RunFailed(f"{name} exited with code {proc.returncode} during the run: {self.log_tail(name)}")
            if maybe_done is None or maybe_done() or time.monotonic() - asked > STATUS_SECONDS:
                status, asked = self.run_status(run_id), time.monotonic()
                if status.startswith("finished"):
                    if on_poll is not None:
                        on_poll()
                    return status
            time.sleep(0.5 if maybe_done is not None else 2)
        raise RunFailed(f"run {run_id} did not finish within {timeout:.0f} s (last status {status})")

    def stop(self) -> None:
        """Stop every process started here, with its children: SIGTERM, then SIGKILL after 10 s."""
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for pid in flwr_processes(self.flwr_home):  # anything that left our process groups
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class HospitalSite:
    """One hospital's files in the workspace: what that site would hold on its own machine."""

    folder: Path
    private_key: Path
    public_key: Path
    data_root: Path
    secret_context: Path | None
    max_lifetime_epsilon: float | None = None
    service: Path | None = None  # the socket of the hospital's long-running service (None: none)

    def node_config(self, hospital: int) -> dict[str, str | int | float]:
        values: dict[str, str | int | float] = {
            PARTITION_KEY: hospital,
            DATA_ROOT_KEY: str(self.data_root),
            STATE_DIR_KEY: str(self.folder / "state"),
        }
        if self.secret_context is not None:
            values[SECRET_CONTEXT_KEY] = str(self.secret_context)
            values[SIGNING_KEY_KEY] = str(self.private_key)  # the SuperNode's node key signs its mask keys
            values[ROSTER_KEY] = str(self.folder / ROSTER_FILE)
        if self.max_lifetime_epsilon is not None:  # the hospital's own cap (privacy.max_lifetime_epsilon here)
            values[MAX_LIFETIME_KEY] = float(self.max_lifetime_epsilon)
        if self.service is not None:
            values[SERVICE_KEY] = str(self.service)
        return values


def workspace_for(cfg: DictConfig, run_dir: Path) -> Path:
    """``deployment.workspace`` or a folder per run under ``federation.hospital_dir`` (never the run folder)."""
    if cfg.deployment.workspace:
        return Path(str(cfg.deployment.workspace)).expanduser().resolve()
    return private_folder(cfg.federation.hospital_dir, run_dir, prefix="deploy-")


def prepare_sites(cfg: DictConfig, workspace: Path, secret: Path | None, resume: bool = False) -> list[HospitalSite]:
    """Each hospital's folder: its node key pair, its own data file, its copy of the secret context.

    A resumed deployment keeps each hospital's node key (its signing key: the roster and the
    secure-aggregation state it signed stay valid) and its ``state`` folder (model, ledgers).
    """
    from pipeline.task.sites import export_hospital_files

    sites = []
    data_files = export_hospital_files(cfg, workspace / "hospitals")
    for data_file in data_files:
        folder = data_file.parent
        private, public = folder / NODE_KEY, folder / NODE_PUBLIC_KEY
        if not (resume and private.exists() and public.exists()):
            private, public = make_node_key(folder)
        copy = None
        if secret is not None:
            copy = write_atomic(folder / secret.name, secret.read_bytes(), private=True)
        cap = cfg.privacy.max_lifetime_epsilon if cfg.privacy.enabled else None
        service = folder / "service" / "hospital.sock" if cfg.deployment.hospital_service else None
        sites.append(HospitalSite(folder, private, public, folder, copy, cap, service))
    if secret is not None:  # the pairwise masks: each hospital signs with its node key; all get the roster
        from pipeline.secagg.agreement import write_roster

        public_keys = {i: site.public_key.read_bytes() for i, site in enumerate(sites)}
        for site in sites:
            write_roster(site.folder / ROSTER_FILE, public_keys)
    return sites


def round_echo(run_dir: Path, rounds: int, echo: Callable[[str], None]) -> Callable[[], None]:
    """A poller that echoes each new row of the run's metrics.csv as the server's progress line."""
    from pipeline.reporting.console import progress_line

    seen = 0

    def poll() -> None:
        nonlocal seen
        rows = read_metrics(run_dir / METRICS_FILE)
        for row in rows[seen:]:
            echo(progress_line(row, rounds))
        seen = len(rows)

    return poll


def summary_changed(run_dir: Path) -> Callable[[], bool]:
    """Whether the run's summary.json was written since this was made (the server writes it last)."""

    def stamp() -> tuple[int, int] | None:
        with contextlib.suppress(FileNotFoundError):
            st = (run_dir / SUMMARY_FILE).stat()
            return (st.st_ino, st.st_mtime_ns)
        return None

    before = stamp()
    return lambda: stamp() != before


def run_local_deployment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run ``cfg`` on a local SuperLink + one SuperNode per hospital; return the run's summary.

    The workspace (keys, certificates, hospital data, logs) is deleted after a completed run
    unless ``deployment.keep_workspace``; a failed run keeps it and names it. It is locked for the
    run (:func:`~pipeline.engines.workspace.private_lock`: the lock file lies beside it, so that
    replacing a stale workspace keeps the lock) and records its run in ``owner.json``.

    ``resume=<run folder>`` continues a deployment that was stopped or killed: in the same
    workspace, with the same CKKS keys, node keys and hospital state folders (their ledgers and
    saved replies), on a fresh SuperLink; what the killed run left running is stopped first.

    Raises:
        RunFailed: another live run holds the workspace; a resume whose workspace is gone; the
            deployment failed.
    """
    workspace = workspace_for(cfg, run_dir)
    with private_lock(workspace):
        resume = bool(cfg.resume) and workspace.exists()
        if cfg.resume and not resume and (run_dir / CHECKPOINT_FILE).exists():
            raise RunFailed(
                f"resume={cfg.resume}: the deployment's workspace {workspace} (keys, the hospitals' ledgers) is gone, "
                "so it cannot be resumed: start anew"
            )
        if resume:
            stop_leftovers(workspace)
            with contextlib.suppress(FileNotFoundError):
                (workspace / SUPERLINK_DB).unlink()  # the killed SuperLink's runs: the resumed run is a new one
        else:
            if workspace.exists():
                shutil.rmtree(workspace)
            workspace.mkdir(parents=True)
        write_owner(workspace, run_dir)
        return _deploy(cfg, run_dir, workspace, resume)


def stop_leftovers(workspace: Path) -> None:
    """Kill what a killed deployment left running (anything with this workspace's ``FLWR_HOME``)."""
    leftovers = flwr_processes(workspace / "flwr_home")
    if leftovers:
        log.warning("stopping %d process(es) left running by the interrupted deployment", len(leftovers))
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while flwr_processes(workspace / "flwr_home") and time.monotonic() < deadline:
        time.sleep(0.1)


def _deploy(cfg: DictConfig, run_dir: Path, workspace: Path, resume: bool = False) -> dict:
    """Keys, sites, the cluster and the run in ``workspace`` (kept from the run it resumes); the summary."""
    from pipeline.engines.simulation import finish, make_ckks_keys

    dep = cfg.deployment
    secret = public = None
    if cfg.encryption.enabled:
        secret, public = make_ckks_keys(cfg, workspace / "consortium")
        public = write_atomic(workspace / "server" / public.name, public.read_bytes())
    sites = prepare_sites(cfg, workspace, secret, resume)
    run_config = write_atomic(workspace / "server" / "run_config.toml", run_config_toml(cfg, run_dir, public))
    try:
        with LocalDeployment(
            workspace, str(dep.host), int(dep.port), bool(dep.insecure), float(dep.startup_timeout)
        ) as cluster:
            for i, site in enumerate(sites):
                cluster.register(site.public_key, f"hospital-{i}")
            for i, site in enumerate(sites):
                if site.service is not None:
                    cluster.start_service(f"hospital_service_{i}", site.service)
            for i, site in enumerate(sites):
                cluster.start_supernode(f"supernode_{i}", site.node_config(i), site.private_key, cluster.ca_cert)
            run_id = cluster.submit(run_config)
            log.info("flwr run: run %d submitted to %s with %d SuperNodes", run_id, cluster.address, len(sites))
            progress = round_echo(run_dir, int(cfg.federation.rounds), lambda line: log.info("%s", line))
            status = cluster.wait(run_id, float(dep.run_timeout), progress, summary_changed(run_dir))
            if status != "finished:completed":
                raise RunFailed(f"run {run_id} ended {status}: {cluster.log_tail('superlink', 8)}")
        summary = finish(cfg, run_dir, secret)
    except BaseException:
        log.error("deployment workspace kept for inspection (logs, keys): %s", workspace)
        raise
    summary["engine"] = "deployment"  # written to summary.json with the provenance
    if not dep.keep_workspace:
        shutil.rmtree(workspace, ignore_errors=True)
    return summary
