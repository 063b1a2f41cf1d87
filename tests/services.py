"""Real servers for tests/test_services.py, started as local processes (no Docker here or on CI).

Each server is a process in its own process group, logging to a file; every wait is bounded and its
failure message carries the server's log tail. `ServiceStack` starts PostgreSQL (a throwaway
cluster), an S3 server (moto), the MLflow tracking server and the Prefect server, all on free
127.0.0.1 ports, and stops whatever it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PG_USER, PG_PASSWORD = "s2d", "s2d-test-only"  # a throwaway cluster that lives as long as the test module
S3_KEY, S3_SECRET = "s2d-test", "s2d-test-secret"
PG_HELP = (
    "tests/test_services.py starts a throwaway PostgreSQL 15 cluster and needs its server binaries (initdb, "
    "postgres) on PATH, and setpriv (util-linux) when run as root: `apt-get install -y postgresql-15`, then "
    "add /usr/lib/postgresql/15/bin to PATH."
)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout_s: float, what: str, server: Server | None = None) -> object:
    """Poll `check` until it returns something truthy; fail after `timeout_s` saying what and why."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server is not None and not server.alive:
            raise AssertionError(
                f"{server.name} exited (status {server.proc.returncode}) while waiting for {what}\n{server.log_tail()}"
            )
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - a server that is still starting fails in many ways
            last = exc
        time.sleep(0.25)
    tail = server.log_tail() if server is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last!r})\n{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """One server process: its own process group (so its children die with it), output to a log."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name, self.cmd, self.log, self.env, self.cwd = name, cmd, log, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        """Signal the group (and any descendant that left it), then SIGKILL what is left."""
        if self.proc is None:
            return
        import psutil

        stragglers: list = []
        with contextlib.suppress(psutil.Error):
            stragglers = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for child in stragglers:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"--- last lines of {self.log} ---\n" + "\n".join(text)


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to `nobody` (CI and this machine run as root)."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]


class ServiceStack:
    """PostgreSQL + S3 + MLflow server + Prefect server, as `infra/docker-compose.yml` wires them."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.servers: dict[str, Server] = {}
        self.pg_port, self.s3_port, self.mlflow_port, self.prefect_port = (free_port() for _ in range(4))
        self.pg_dir = Path(tempfile.mkdtemp(prefix="s2d-pg-"))  # outside pytest's root-only tmp tree

    # ---- addresses
    def pg_url(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/{db}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def client_env(self) -> dict[str, str]:
        """What a user exports to reach the stack (README "Without Docker"): servers, credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
        return {
            **env,
            "PATH": f"{VENV_BIN}:{env['PATH']}",
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_HOME": str(self.workdir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "S2D_TRACKING_URI": self.mlflow_url,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "DVC_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "GX_ANALYTICS_ENABLED": "false",
        }

    # ---- PostgreSQL
    def init_postgres(self) -> None:
        for tool in ("initdb", "postgres", *(["setpriv"] if os.geteuid() == 0 else [])):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} not found. {PG_HELP}")
        (self.pg_dir / "pw").write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.pg_dir, "nobody", "nogroup")
            shutil.chown(self.pg_dir / "pw", "nobody", "nogroup")
        done = subprocess.run(
            _as_unprivileged(
                ["initdb", "-D", str(self.pg_dir / "data"), "-U", PG_USER, f"--pwfile={self.pg_dir / 'pw'}",
                 "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"]
            ),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}\n{done.stderr}"

    def start_postgres(self) -> Server:
        server = Server(
            "postgres",
            _as_unprivileged(
                ["postgres", "-D", str(self.pg_dir / "data"), "-p", str(self.pg_port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.pg_dir}",
                 "-c", "fsync=off"]  # throwaway data: no need to wait for the disk
            ),
            self.workdir / "postgres.log",
        )  # fmt: skip
        self.servers["postgres"] = server.start()
        return server

    def wait_postgres(self, timeout_s: float = 60) -> None:
        import psycopg

        def connects() -> bool:
            psycopg.connect(self.pg_url("postgres"), connect_timeout=2).close()
            return True

        wait_until(connects, timeout_s, f"PostgreSQL on 127.0.0.1:{self.pg_port}", self.servers["postgres"])

    def stop_postgres(self) -> None:
        self.servers["postgres"].stop(signal.SIGINT)  # SIGINT: PostgreSQL's "fast" shutdown

    def psql(self, db: str, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of one query, straight from PostgreSQL (not through any server's API)."""
        import psycopg

        with psycopg.connect(self.pg_url(db), connect_timeout=5, autocommit=True) as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else []

    # ---- S3
    def start_s3(self) -> Server:
        server = Server(
            "s3",
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)],
            self.workdir / "s3.log",
        )
        self.servers["s3"] = server.start()
        return server

    def s3(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.s3_url, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )  # fmt: skip

    def s3_keys(self, bucket: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    # ---- MLflow
    def start_mlflow(self) -> Server:
        cmd = [
            str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", self.pg_url("mlflow"),
            "--artifacts-destination", "s3://mlflow", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
        ]  # fmt: skip
        env = {**self.client_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as infra/README starts it
        server = Server("mlflow", cmd, self.workdir / "mlflow.log", env=env, cwd=self.workdir)
        self.servers["mlflow"] = server.start()
        return server

    def wait_mlflow(self, timeout_s: float = 120) -> None:
        wait_until(
            lambda: http_ok(self.mlflow_url + "/health"), timeout_s, "the MLflow server", self.servers["mlflow"]
        )

    # ---- Prefect
    def start_prefect(self) -> Server:
        env = {
            **self.client_env(),
            "PREFECT_API_DATABASE_CONNECTION_URL": self.pg_url("prefect", "postgresql+asyncpg"),
            "PREFECT_UI_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL")
        cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)]
        server = Server("prefect-server", cmd, self.workdir / "prefect-server.log", env=env, cwd=self.workdir)
        self.servers["prefect"] = server.start()
        return server

    def wait_prefect(self, timeout_s: float = 120) -> None:
        wait_until(
            lambda: http_ok(self.prefect_api + "/health"), timeout_s, "the Prefect server", self.servers["prefect"]
        )

    # ---- all of it
    def start(self) -> ServiceStack:
        self.init_postgres()
        self.start_postgres()
        self.start_s3()
        self.wait_postgres()
        for db in ("mlflow", "prefect"):  # what infra/postgres/init.sql does for compose
            self.psql("postgres", f"CREATE DATABASE {db}")
        wait_until(lambda: http_ok(self.s3_url), 60, "the S3 server", self.servers["s3"])
        for bucket in ("mlflow", "dvc"):
            self.s3().create_bucket(Bucket=bucket)
        self.start_mlflow()
        self.start_prefect()
        self.wait_mlflow()
        self.wait_prefect()
        return self

    def stop(self) -> None:
        """Last started first (the worker before its server); throwaway servers get 5 s to go."""
        for server in reversed(list(self.servers.values())):
            server.stop(signal.SIGINT if server.name == "postgres" else signal.SIGTERM, timeout_s=5)
        shutil.rmtree(self.pg_dir, ignore_errors=True)
