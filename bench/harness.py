"""What every benchmark shares: a results file of JSON lines, one record per cell, each stamped with the
machine it ran on; cells already recorded are skipped, so a stopped benchmark resumes where it stopped;
and one command line, `python -m bench.<name> run [options]` and `python -m bench.<name> report`.

A cell is the dict of fields that name one measurement (`{"seed": 0, "budget": 64}`); its record is the
cell plus what was measured plus `machine`. `run --again` measures recorded cells again; readers take
the newest record of each cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def machine() -> dict:
    """CPU model and cores, GPU, Python and library versions, and the git commit."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    info = {
        "cpu": f"{os.cpu_count()} cores, {models[0] if models else platform.machine()}",
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for package in ("transformers", "trl", "accelerate", "datasets", "vllm"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return info | {"commit": git.stdout.strip() or None}


def describe(m: dict) -> str:
    """A record's machine in one line, without its commit (versions not recorded are left out)."""
    versions = ", ".join(f"{p} {m[p.lower()]}" for p in ("Python", "torch", "transformers", "trl") if m.get(p.lower()))
    return f"{m.get('gpu') or 'no GPU'}; CPU {m['cpu']}; {versions}"


def machines(records: list[dict]) -> str:
    """The machines and commits `records` were measured on, in one line for the reports."""
    described = dict.fromkeys(describe(r["machine"]) for r in records)
    return f"{' / '.join(described)}; commit {', '.join(dict.fromkeys(r['machine']['commit'] for r in records))}"


def read(path: Path, *cell: str) -> list[dict]:
    """The records in `path`, oldest first (none when it does not exist); given the fields that name a
    cell, only the newest measurement of each cell (a failed attempt's record is no measurement), in
    the order the cells were first recorded."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not cell:
        return records
    return list({json.dumps([r.get(k) for k in cell]): r for r in records if "error" not in r}.values())


def append(path: Path, record: dict) -> dict:
    """Add `record`, stamped with this machine, as one line: a run stopped mid-way loses no record."""
    record = {**record, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return record


def record(path: Path, cell: dict, measure: Callable[[], dict], again: bool = False) -> dict:
    """`cell`'s newest record in `path`; unless there is one (or with `again`), `measure()` it and append
    the record at once, with its wall time (a `wall_s` of the measurement's own wins). A failure is
    recorded with its error and raised; a failed cell is measured again next time."""
    done = [] if again else [r for r in read(path) if "error" not in r and all(r.get(k) == v for k, v in cell.items())]
    if done:
        print(f"{path.name}: {cell} already recorded", flush=True)
        return done[-1]
    t0 = time.perf_counter()
    try:
        measured = measure()
    except Exception as exc:
        append(path, {**cell, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]})
        raise
    out = append(path, {**cell, "wall_s": round(time.perf_counter() - t0, 1), **measured})
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, default=str)[:400], flush=True)
    return out


def run_cells(path: Path, cells: Iterable[dict], measure: Callable[[dict], dict], again: bool = False) -> None:
    """`record` each cell in turn."""
    for cell in cells:
        record(path, cell, lambda cell=cell: measure(cell), again)


def not_run(name: str, how: str = "") -> str:
    """The line a report gives for a benchmark with no records yet."""
    return f"Not run yet: `python -m bench.{name} run{how}`.\n"


def main(
    name: str,
    doc: str,
    run: Callable[[argparse.Namespace], object],
    report: Callable[[argparse.Namespace], str],
    options: Callable[[argparse.ArgumentParser], object] | None = None,
    run_options: Callable[[argparse.ArgumentParser], object] | None = None,
    commands: dict[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], object]]] | None = None,
) -> None:
    """A benchmark's command line: `python -m bench.<name> run [--again]` measures, `... report` prints its
    part of RESULTS.md; `options` are taken by both, `run_options` by `run`. `commands` adds more: each
    name's function adds its options to its parser and returns what runs it."""
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="measure the cells not yet recorded")
    run_parser.add_argument("--again", action="store_true", help="measure recorded cells again")
    report_parser = sub.add_parser("report", help="print this benchmark's part of RESULTS.md")
    for p, adds in ((run_parser, (options, run_options)), (report_parser, (options,))):
        for add in filter(None, adds):
            add(p)
    handlers = {name: add(sub.add_parser(name)) for name, add in (commands or {}).items()}
    args = parser.parse_args()
    if args.command == "report":
        print(report(args))
    elif args.command in handlers:
        handlers[args.command](args)
    else:
        run(args)
