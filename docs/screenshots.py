"""Screenshots of the MLflow and Prefect UIs over a pipeline run, taken with headless Chromium.

    make screenshots                     # after `make run`: writes docs/mlflow-*.png
    python -m docs.screenshots --root /path/to/project
    python -m docs.screenshots --prefect-url http://127.0.0.1:4200 --flow-run <id>   # docs/prefect-*.png

MLflow: starts a real `mlflow ui` on the project's tracking store (127.0.0.1, a free port) and opens
the latest pipeline run's views — the experiment's runs table, the parent run's
metrics (a chart per model, grouped by metric) and its accuracy chart, the arms compared and the
registered model.
Prefect: opens a finished `s2d` flow run on a running server — its page with the task runs, and its
`s2d-result` artifact. A server on another port than 4200 serves a UI that calls the API on 4200
unless it was started with `PREFECT_UI_API_URL` set to its own API; that is checked first.
Each view is saved as a PNG from Debian's `chromium`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Offline machines refuse these connections; without the flags Chromium retries them at length.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=120000",  # let the UI's requests finish and the page render
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow ui exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui at {url} did not answer /health within {timeout_s:.0f} s")


def views(root: Path) -> dict[str, str]:
    """Screenshot name -> UI route (after `#`) for the latest pipeline run in the project's store."""
    os.chdir(root)
    from mlflow import MlflowClient

    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages.evaluate import models_evaluated
    from s2d_pipeline.tracking import PIPELINE_KEY_TAG, open_store

    cfg = load_config()
    _, experiment = open_store(cfg)
    client = MlflowClient()
    parents = client.search_runs(
        [experiment], filter_string=f"tags.`{PIPELINE_KEY_TAG}` != ''", order_by=["attributes.start_time DESC"]
    )
    if not parents:
        raise SystemExit(f"no pipeline run in {cfg.tracking.uri}: run `make run` first")
    parent = parents[0].info.run_id
    evaluated = json.loads((cfg.metrics / "evaluate.json").read_text())
    names = {f"evaluate/{name}" for name in models_evaluated(evaluated)}
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    compared = [r.info.run_id for r in children if r.info.run_name in names]
    name = cfg.tracking.registered_model
    version = client.get_model_version_by_alias(name, "challenger").version
    compare = urllib.parse.urlencode({"runs": json.dumps(compared), "experiments": json.dumps([experiment])})
    return {
        # MLflow 3.17 opens an experiment where its sidebar toggle says (GenAI: the overview), not by its kind tag.
        "mlflow-runs": f"/experiments/{experiment}/runs",
        "mlflow-compare-arms": f"/compare-runs?{compare}",
        "mlflow-parent-charts": f"/experiments/{experiment}/runs/{parent}/artifacts/charts/accuracy.png",
        "mlflow-parent-metrics": f"/experiments/{experiment}/runs/{parent}/model-metrics",
        "mlflow-registered-model": f"/models/{name}/versions/{version}",
    }


def _get_json(url: str, body: dict | None = None):
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def prefect_views(url: str, flow_run: str) -> dict[str, str]:
    """Screenshot name -> Prefect UI route (its default UI, under /v2) for a finished `s2d` flow run."""
    ui_api = _get_json(f"{url}/ui-settings")["api_url"]
    if ui_api.rstrip("/") != f"{url}/api":
        raise SystemExit(
            f"the UI at {url} calls the API at {ui_api}, so its pages would be empty: "
            f"start that server with PREFECT_UI_API_URL={url}/api"
        )
    only = {"flow_run_id": {"any_": [flow_run]}, "key": {"any_": ["s2d-result"]}}
    artifacts = _get_json(f"{url}/api/artifacts/filter", {"artifacts": only})
    if not artifacts:
        raise SystemExit(f"flow run {flow_run} at {url} has no s2d-result artifact: it has not finished")
    return {
        "prefect-flow-run": f"/v2/runs/flow-run/{flow_run}?tab=TaskRuns",
        "prefect-result-artifact": f"/v2/artifacts/artifact/{artifacts[0]['id']}",
    }


def shoot(url: str, out: Path, chromium: str) -> None:
    with tempfile.TemporaryDirectory(prefix="s2d-chromium-") as profile, tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
            capture_output=True,
            timeout=180,
            check=True,
        )
        shutil.move(shot, out)  # only a finished screenshot replaces the committed one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m docs.screenshots", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=DOCS.parent, help="the project whose MLflow store to show")
    p.add_argument("--out", type=Path, default=DOCS)
    p.add_argument("--prefect-url", help="a running Prefect server: shoot its flow run --flow-run instead of MLflow")
    p.add_argument("--flow-run", help="the id of a finished `s2d` flow run on --prefect-url")
    args = p.parse_args(argv)
    if bool(args.prefect_url) != bool(args.flow_run):
        p.error("--prefect-url and --flow-run go together")
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: `apt-get install -y chromium` (make screenshots does it)")
    root, out = args.root.resolve(), args.out.resolve()
    if args.prefect_url:
        base = args.prefect_url.rstrip("/")
        for name, route in prefect_views(base, args.flow_run).items():
            shoot(f"{base}{route}", out / f"{name}.png", chromium)
            print(f"wrote {out / name}.png  ({route})")
        return 0
    routes = views(root)
    from s2d_pipeline.config import load_config
    from s2d_pipeline.runtime import tracking_uri

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            tracking_uri(load_config()),
            "--host",
            "127.0.0.1",
        ]
        + ["--port", str(port)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(base, server)
        for name, route in routes.items():
            shoot(f"{base}/#{route}", out / f"{name}.png", chromium)
            print(f"wrote {out / name}.png  ({route})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its workers can outlast the grace period
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
