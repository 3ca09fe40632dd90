"""`rlreg bench quality`: test RMSE of every method on every (dataset, split) of a preset, with CIs.

Writes one JSON (records per run, per-dataset means with 95 % CIs, paired win rates of each RL
method over CE, an aggregate IQM of normalised scores with stratified bootstrap CIs, the
RMSE-vs-K sampling curves, interval coverage and, for the paper preset, the per-dataset CE search
and per-RL-run diagnostics), prints the tables and draws the plots beside the JSON
(benchmarks/quality/results.py).

Nothing is lost: each finished run (and each dataset's CE search) is appended to
`<output>.records.jsonl` at once; running the same command again skips what is there — a crash or
a stopped session costs the run in progress. A run that failed is retried by the next invocation
(the last line for a (dataset, split, method) wins), up to MAX_ATTEMPTS times."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from benchmarks.common import load_average
from benchmarks.quality.presets import RL_METHODS, get_preset
from rlreg.rundir import ModelFiles, RunDir

NAME = "quality"
REQUIRES: tuple[str, ...] = ()
# Settings that decide what a stored run means; the optional ones only where a preset has them, so
# the small / full presets keep their fingerprints.
FINGERPRINT_KEYS = ("base", "ks")
OPTIONAL_FINGERPRINT_KEYS = ("method_overrides", "tune", "diagnostics")
# A run that failed this many times with the same rlreg sources is left failed (a bug, not a tree
# caught mid-edit): later invocations do not spend its cost again until the code changes.
MAX_ATTEMPTS = 3


def fingerprint(preset: dict) -> str:
    """Identifies the settings a stored run was made with (a changed preset never mixes in)."""
    settings = {k: preset[k] for k in FINGERPRINT_KEYS}
    settings.update({k: preset[k] for k in OPTIONAL_FINGERPRINT_KEYS if k in preset})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def key(row: dict) -> tuple:
    return row["dataset"], row["split"], row["method"]


class Records:
    """The records file: one JSON line per finished run ("record" + its "curve" rows, with the RL
    diagnostics inside the record), or per dataset's CE search ("tune"). Lines of another
    fingerprint are ignored; a torn last line (a kill mid-write) is skipped with a warning."""

    def __init__(self, path: Path, fp: str, sources: str | None = None):
        # sources: the hash of the rlreg code now (methods.code_version); failures under other code
        # do not count towards MAX_ATTEMPTS
        self.path, self.fp, self.sources = Path(path), fp, sources
        self.records: dict[tuple, dict] = {}
        self.curves: dict[tuple, list[dict]] = {}
        self.tunes: dict[str, dict] = {}
        self.failures: dict[tuple, int] = {}  # failed attempts under the current sources
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                print(f"warning: {self.path}:{number}: not a JSON line (a run killed mid-write?); skipped")
                continue
            if row.get("fingerprint") != self.fp:
                continue
            kind, body = row.get("kind"), row.get("row")
            if kind == "record":
                self.records[key(body)] = body  # a later line for the same run replaces a failed one
                self.curves[key(body)] = []
                self._count_failure(body)
            elif kind == "curve":  # written right after their record, in the same write
                self.curves.setdefault(key(body), []).append(body)
            elif kind == "tune":
                self.tunes[body["dataset"]] = body

    def done(self) -> set[tuple]:
        """Finished runs, and runs that failed MAX_ATTEMPTS times (not tried again)."""
        return {k for k, r in self.records.items()
                if not r.get("error") or self.failures.get(k, 0) >= MAX_ATTEMPTS}

    def _count_failure(self, record: dict) -> None:
        same_code = self.sources is None or (record.get("code") or {}).get("rlreg_sources") == self.sources
        if record.get("error") and same_code:
            self.failures[key(record)] = self.failures.get(key(record), 0) + 1

    def add(self, record: dict, curve: list[dict]) -> None:
        """Keep and append one finished run, in one write."""
        self.records[key(record)] = record
        self.curves[key(record)] = curve
        self._count_failure(record)
        self._write([("record", record)] + [("curve", row) for row in curve])

    def add_tune(self, row: dict) -> None:
        self.tunes[row["dataset"]] = row
        self._write([("tune", row)])

    def _write(self, rows: list[tuple[str, dict]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("".join(json.dumps({"fingerprint": self.fp, "kind": kind, "row": row}, default=float) + "\n"
                            for kind, row in rows))
            f.flush()

    def all_records(self) -> list[dict]:
        return list(self.records.values())

    def all_curves(self) -> list[dict]:
        return [row for k in self.records for row in self.curves.get(k, [])]


def records_path(output: Path) -> Path:
    return Path(output).with_suffix(".records.jsonl")


def _print_run(record: dict) -> None:
    rmse, (lo, hi) = record["rmse"], record["rmse_ci"]
    shown = "failed: " + str(record["error"]) if record["error"] else f"{rmse:.4g} [{lo:.4g}, {hi:.4g}]"
    print(f"  {record['dataset']} split {record['split']} {record['method']:<10} test RMSE {shown} "
          f"({record['wall_s']:.0f} s)", flush=True)


def _tuned(preset: dict, dataset: dict, store: Records, work: Path) -> dict | None:
    """The dataset with its searched CE settings (searching now if not yet stored); None if the
    search failed (this dataset is skipped in this invocation and retried in the next)."""
    from benchmarks.quality.tuning import tune_dataset

    if "tune" not in preset:
        return dataset
    if dataset["name"] not in store.tunes:
        print(f"{dataset['name']}: CE search ({preset['tune']['space']})", flush=True)
        try:
            row = tune_dataset(preset, dataset, preset["tune"].get("split", preset["splits"][0]), work / "tune")
        except Exception as err:  # noqa: BLE001 - one dataset's search must not stop the others
            import traceback

            traceback.print_exc()
            print(f"{dataset['name']}: CE search failed ({type(err).__name__}: {err}); skipped this time", flush=True)
            return None
        store.add_tune(row)
        print(f"{dataset['name']}: CE settings {row['chosen']} ({row['wall_s']:.0f} s)", flush=True)
    return {**dataset, "sft": dict(store.tunes[dataset["name"]]["chosen"])}


def run_preset(preset: dict, output: Path) -> dict:
    """Run (or finish) every (dataset, split, method) of the preset; returns the JSON payload."""
    from benchmarks.common import RESULTS_DIR
    from benchmarks.quality.methods import SplitRun, code_version, failed_record, run_config
    from benchmarks.quality.results import build_payload
    from rlreg.actors.session import ensure_ray

    started, load_before = time.monotonic(), load_average()
    store = Records(records_path(output), fingerprint(preset), code_version()["rlreg_sources"])
    # Models and logs of each run: beside a given output, under runs/ for the committed results
    # folder (they are large and belong to this machine, not to the repository).
    work = (Path("runs") / f"bench-{output.stem}" if output.parent.resolve() == RESULTS_DIR.resolve()
            else output.with_suffix(""))
    done = store.done()
    ensure_ray(run_config(preset, preset["datasets"][0], preset["splits"][0], "CE", work).ray)
    failed_now: list[dict] = []
    # Splits outermost and every method of a (dataset, split) together: a run stopped early still
    # has complete groups, every dataset at its first split first.
    for split in preset["splits"]:
        for base_dataset in preset["datasets"]:
            name = base_dataset["name"]
            todo = [m for m in preset["methods"] if (name, split, m) not in done]
            if not todo:
                continue
            dataset = _tuned(preset, base_dataset, store, work / name.replace(":", "_"))
            if dataset is None:
                continue
            print(f"{name} split {split}: {', '.join(todo)}", flush=True)
            try:
                run = SplitRun(preset, dataset, split, work / name.replace(":", "_") / f"split{split}")
            except Exception as err:  # bad data or settings for this dataset: say so, go on with the others
                for method in todo:
                    record = failed_record(name, split, method, err)
                    _print_run(record)
                    failed_now.append(record)
                continue  # not stored: a rerun after fixing the cause retries it
            ce_model = RunDir(run.work_dir / "CE").sft_model
            if "CE" not in todo and (ce_model / ModelFiles.WEIGHTS).is_file():
                run.ce_dir = ce_model  # CE finished in an earlier invocation
            elif "CE" not in todo and any(m in RL_METHODS for m in todo):
                # CE's record is here but its model is not (runs/ stays on the machine that trained
                # it): train CE again, its new record replacing the old, so that the RL runs start
                # from the CE model the results report.
                print(f"  {name} split {split}: CE model not on this machine; training CE again", flush=True)
                todo = ["CE", *todo]
            for method in todo:
                record, curve = run.run(method)
                _print_run(record)
                store.add(record, curve)
    records = store.all_records() + [r for r in failed_now if key(r) not in store.records]
    return build_payload(preset, records, store.all_curves(), store.tunes,
                         wall_s=time.monotonic() - started, load_before=load_before)


def run_quality(preset_name: str, output: str | None, splits: int | None = None,
                datasets: list[str] | None = None, methods: list[str] | None = None) -> Path:
    from benchmarks.common import RESULTS_DIR
    from benchmarks.quality.results import write_results

    preset = get_preset(preset_name, splits, datasets, methods)
    path = Path(output) if output else RESULTS_DIR / f"quality_{preset_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = run_preset(preset, path)  # every finished run is already in the records file
    write_results(data, path)
    failed = data["failed_runs"]
    if failed and all(r["error"] for r in data["records"] if r["method"] == "CE"):
        raise RuntimeError(f"every CE run failed; see the errors in {path}")
    return path
