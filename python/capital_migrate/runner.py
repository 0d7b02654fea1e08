"""Drive one playbook through ansible-runner, show it live, and leave no secret behind.

ansible-runner writes its inputs (env/extravars, env/envvars, ...) into the private data dir and records
the whole process environment in artifacts/<id>/command. So: a fresh 0700 private data dir per run,
`suppress_env_files`, secrets removed from the environment it copies (the password reaches libpq through
a 0600 pgpass file outside that dir), and the dir deleted afterwards unless --keep-artifacts (then only
the files that can hold the environment are removed).
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ansible_collections.prestamos.capital.plugins.plugin_utils.report import stage_of_role

from capital_migrate import report as report_mod
from capital_migrate.connection import SECRET_ENV, DbTarget, environ_without, pgpass_file

CALLBACK = "prestamos.capital.capital_report"


def repo_root() -> Path:
    """The checkout this CLI belongs to (python/capital_migrate/runner.py -> the repository root)."""
    override = os.environ.get("CAPITAL_REPO_ROOT")
    return Path(override).resolve() if override else Path(__file__).resolve().parents[2]


class LiveView(Protocol):
    """What the runner tells the operator while a playbook runs."""

    def stage(self, name: str) -> None: ...
    def task(self, stage: str | None, name: str) -> None: ...
    def warning(self, text: str) -> None: ...
    def failure(self, stage: str | None, task: str, message: str) -> None: ...
    def database(self, host: str, outcome: str, detail: str) -> None: ...
    def progress(self, done: int, total: int, rate: float | None, eta: float | None) -> None: ...
    def close(self) -> None: ...


class QuietView:
    """CI mode: nothing while running; the summary (or --json) says it all at the end."""

    def stage(self, name: str) -> None:
        pass

    def task(self, stage: str | None, name: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass

    def failure(self, stage: str | None, task: str, message: str) -> None:
        pass

    def database(self, host: str, outcome: str, detail: str) -> None:
        pass

    def progress(self, done: int, total: int, rate: float | None, eta: float | None) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class ConsoleView:
    """Human mode on stderr: stage and task lines, warnings as they come, a backfill progress bar.

    On a terminal the bar redraws in place (rich); elsewhere (logs, CI) a progress line at most every
    5 seconds, so a log stays readable.
    """

    def __init__(self, stream: Any = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True, markup=False)
        self._progress: Any = None
        self._bar: Any = None
        self._stage: str | None = None
        self._last_line = 0.0
        self._lock = threading.Lock()

    def _print(self, text: str, style: str | None = None) -> None:
        (self._progress.console if self._progress is not None else self.console).print(text, style=style)

    def stage(self, name: str) -> None:
        with self._lock:
            self._end_bar()
            self._stage = name
            self._print(f"== {name} ==", style="bold cyan")

    def task(self, stage: str | None, name: str) -> None:
        with self._lock:
            self._print(f"   {name}", style="dim")

    def warning(self, text: str) -> None:
        with self._lock:
            self._print(f"   WARNING: {text}", style="yellow")

    def failure(self, stage: str | None, task: str, message: str) -> None:
        with self._lock:
            self._print(f"   FAILED [{stage or '-'}] {task}: {message}", style="bold red")

    def database(self, host: str, outcome: str, detail: str) -> None:
        with self._lock:
            self._end_bar()
            self._print(f"-> {host} {outcome}{f' ({detail})' if detail else ''}",
                        style="bold green" if outcome == "success" else "bold red")

    def progress(self, done: int, total: int, rate: float | None, eta: float | None) -> None:
        with self._lock:
            if not self.console.is_terminal:
                now = time.monotonic()
                if now - self._last_line >= 5 or (total and done >= total):
                    self._last_line = now
                    rate_text = f"{rate:,.0f} rows/s" if rate else "- rows/s"
                    self.console.print(f"   backfill {done:,}/{total:,} rows  {rate_text}  ETA {_fmt_eta(eta)}")
                return
            if self._progress is None:
                from rich.progress import BarColumn, Progress, TextColumn

                self._progress = Progress(
                    TextColumn("   backfill"),
                    BarColumn(),
                    TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
                    TextColumn("{task.fields[rate]}"),
                    TextColumn("ETA {task.fields[eta]}"),
                    console=self.console,
                    transient=False,
                )
                self._progress.start()
                self._bar = self._progress.add_task("backfill", total=max(total, 1), rate="", eta="--:--")
            rate_text = f"{rate:,.0f} rows/s" if rate else ""
            self._progress.update(self._bar, completed=done, total=max(total, 1), rate=rate_text, eta=_fmt_eta(eta))

    def _end_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._bar = None

    def close(self) -> None:
        with self._lock:
            self._end_bar()


class BackfillPoller:
    """Polls capital_backfill_progress once a second over its own connection while `migrate` runs.

    Best effort: an unreachable database or a missing table just means no bar.
    """

    def __init__(self, target: DbTarget, view: LiveView, interval: float = 1.0) -> None:
        self.target = target
        self.view = view
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[float, int]] = []

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="capital-backfill-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        import psycopg2

        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(connect_timeout=3, **self.target.connect_kwargs())
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("select to_regclass('capital_backfill_progress') is not null")
                    row = cur.fetchone()
                    if row and row[0]:
                        cur.execute("select coalesce(sum(rows_done), 0), coalesce(sum(rows_total), 0) "
                                    "from capital_backfill_progress")
                        done, total = (int(v) for v in cur.fetchone() or (0, 0))
                        if total:
                            self._report(done, total)
            except Exception:  # progress is a nicety; the run never depends on it
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _report(self, done: int, total: int) -> None:
        now = time.monotonic()
        self._samples.append((now, done))
        self._samples = [s for s in self._samples if now - s[0] <= 15]
        rate = None
        if len(self._samples) >= 2 and self._samples[-1][0] > self._samples[0][0]:
            rate = (self._samples[-1][1] - self._samples[0][1]) / (self._samples[-1][0] - self._samples[0][0])
        eta = (total - done) / rate if rate and rate > 0 else None
        self.view.progress(done, total, rate, eta)


@dataclass
class RunRequest:
    """One playbook run as the CLI wants it."""

    playbook: str
    inventory: Path
    extravars: dict[str, Any] = field(default_factory=dict)
    target: DbTarget = field(default_factory=DbTarget)
    report_dir: Path | None = None
    keep_artifacts: bool = False
    vault_password_file: Path | None = None
    secret_env_names: tuple[str, ...] = ()
    check: bool = False  # ansible-playbook --check: a dry run (the rollback's plan)


@dataclass
class RunResult:
    """What came back: runner status and rc, the custom stats, the report the callback wrote."""

    run_id: str
    status: str
    rc: int
    stats: dict[str, Any]
    report: dict[str, Any] | None
    report_json: Path | None
    report_md: Path | None
    private_data_dir: Path | None
    failures: list[dict[str, Any]]
    warnings: list[str]
    output_tail: list[str] = field(default_factory=list)

    @property
    def capital_report(self) -> dict[str, Any]:
        """The merged `capital_report` stats (from the report, else straight from the stats event)."""
        data = self.report.get("data") if self.report else None
        if isinstance(data, dict):
            return data
        artifact = self.stats.get("artifact_data") or {}
        value = artifact.get("capital_report")
        return value if isinstance(value, dict) else {}


def _callbacks_enabled(root: Path) -> str:
    """ansible.cfg's callbacks_enabled plus ours (the env variable replaces the ini value, so merge)."""
    parser = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(OSError, configparser.Error):
        parser.read(root / "ansible.cfg")
    current = parser.get("defaults", "callbacks_enabled", fallback="")
    names = [n.strip() for n in current.replace("\n", ",").split(",") if n.strip()]
    if CALLBACK not in names:
        names.append(CALLBACK)
    return ",".join(names)


def _task_text(name: str) -> str:
    """A task's name for the live view, without the `<stage> | ` prefix it may carry for readability."""
    split = report_mod.stage_of(name)
    return split[1] if split else name


class _EventPump:
    """Turns runner events into live-view calls and collects what the CLI needs afterwards."""

    def __init__(
        self, view: LiveView, poller: BackfillPoller | None, literals: list[str], keep: bool
    ) -> None:
        self.view = view
        self.poller = poller
        self.literals = literals
        self.keep = keep
        self.stage: str | None = None
        self.stats: dict[str, Any] = {}
        self.failures: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._seen_warnings: set[str] = set()

    def _clean(self, text: str) -> str:
        return str(report_mod.redact_text(text, self.literals))

    def _warn(self, text: str) -> None:
        text = self._clean(" ".join(text.split()))
        if text and text not in self._seen_warnings:
            self._seen_warnings.add(text)
            self.warnings.append(text)
            self.view.warning(text)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            name = str(data.get("task") or data.get("name") or "")
            stage = stage_of_role(data.get("role"))
            if stage is not None:
                if stage != self.stage:
                    if self.poller is not None and self.stage == "migrate":
                        self.poller.stop()
                    self.stage = stage
                    self.view.stage(stage)
                    if self.poller is not None and self.stage == "migrate":
                        self.poller.start()
                self.view.task(self.stage, self._clean(_task_text(name)))
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            message = str(res.get("msg") or res.get("stderr") or res.get("reason") or "")
            task = str(data.get("task") or "")
            stage = stage_of_role(data.get("role"))
            cleaned = self._clean(message)
            self.failures.append({"stage": stage, "task": task, "message": cleaned})
            self.view.failure(stage, task, cleaned[:500])
        elif kind == "runner_on_ok":
            self._database_outcome(data)
        elif kind == "warning":
            stdout = str(event.get("stdout") or "")
            self._warn(stdout.replace("[WARNING]:", "").strip())
        elif kind == "playbook_on_stats":
            self.stats = dict(data)
        if kind.startswith("runner_on_"):
            for warning in (data.get("res") or {}).get("warnings") or []:
                self._warn(str(warning))
        # Events land on disk only when the operator keeps the artifacts.
        return self.keep


    def _database_outcome(self, data: Mapping[str, Any]) -> None:
        """One line per database when its run records its outcome (roles/run/tasks/end.yml, set_stats)."""
        stats = (data.get("res") or {}).get("ansible_stats") or {}
        run = ((stats.get("data") or {}).get("capital_report") or {}).get("run") or {}
        outcome = run.get("outcome") if isinstance(run, dict) else None
        if isinstance(outcome, str) and outcome:
            where = run.get("failed_stage") if outcome != "success" else ""
            self.view.database(str(data.get("host") or "?"), outcome, self._clean(f"in {where}" if where else ""))


def _scrub(private_dir: Path, keep: bool) -> Path | None:
    """Remove the private data dir, or (when kept) every file that can hold the environment or inputs."""
    if not keep:
        shutil.rmtree(private_dir, ignore_errors=True)
        return None
    shutil.rmtree(private_dir / "env", ignore_errors=True)
    for artifact in (private_dir / "artifacts").glob("*"):
        for name in ("command", "env", "fact_cache"):
            target = artifact / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
    return private_dir


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="capital-migrate-run-"))
    os.chmod(path, 0o700)
    yield path


def run_playbook(
    request: RunRequest,
    view: LiveView,
    on_status: Callable[[str], None] | None = None,
) -> RunResult:
    """Run `request.playbook` and return its result; the private data dir is scrubbed in every case."""
    import ansible_runner

    root = repo_root()
    run_id = uuid.uuid4().hex[:12]
    venv_bin = Path(sys.executable).parent
    literals = report_mod.secret_literals(os.environ, [request.target.password])
    poller = BackfillPoller(request.target, view) if not request.target.is_empty else None
    pump = _EventPump(view, poller, literals, request.keep_artifacts)
    status_holder = {"status": "unstarted"}

    def status_handler(data: Mapping[str, Any], runner_config: Any = None) -> None:
        status_holder["status"] = str(data.get("status", ""))
        if on_status is not None:
            on_status(status_holder["status"])

    with contextlib.ExitStack() as stack:
        private = stack.enter_context(_private_dir())
        passfile = stack.enter_context(pgpass_file(request.target))
        index_file = private / "report-index.json"
        envvars: dict[str, str] = {
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": f"{root / 'collections'}{os.pathsep}{root / 'python'}",
            "ANSIBLE_CALLBACKS_ENABLED": _callbacks_enabled(root),
            "ANSIBLE_NOCOLOR": "1",
            "CAPITAL_RUN_ID": run_id,
            "CAPITAL_REPORT_INDEX": str(index_file),
            **request.target.libpq_env(),
        }
        if passfile is not None:
            envvars["PGPASSFILE"] = str(passfile)
        if request.report_dir is not None:
            envvars["CAPITAL_REPORT_DIR"] = str(request.report_dir)
        cmdline: list[str] = []
        if request.vault_password_file is not None:
            cmdline += ["--vault-password-file", str(request.vault_password_file)]
        if request.check:
            cmdline.append("--check")
        hidden = tuple(dict.fromkeys((*SECRET_ENV, *request.secret_env_names)))
        try:
            with environ_without(hidden):
                runner = ansible_runner.run(
                    private_data_dir=str(private),
                    project_dir=str(root),
                    playbook=request.playbook,
                    inventory=str(request.inventory),
                    extravars=request.extravars,
                    envvars=envvars,
                    cmdline=" ".join(cmdline) or None,
                    ident=run_id,
                    event_handler=pump,
                    status_handler=status_handler,
                    suppress_env_files=True,
                    quiet=True,
                )
            status, rc = str(runner.status), int(runner.rc if runner.rc is not None else 1)
            tail = _output_tail(runner, literals)
        finally:
            if poller is not None:
                poller.stop()
            view.close()
            report_json = _find_report(index_file, request.report_dir, run_id)
            kept = _scrub(private, request.keep_artifacts)
    report = None
    if report_json is not None:
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(report_json.read_text(encoding="utf-8"))
    return RunResult(
        run_id=run_id,
        status=status,
        rc=rc,
        stats=pump.stats,
        report=report,
        report_json=report_json,
        report_md=report_json.with_suffix(".md") if report_json else None,
        private_data_dir=kept,
        failures=pump.failures,
        warnings=pump.warnings,
        output_tail=tail,
    )


def _output_tail(runner: Any, literals: list[str], lines: int = 15) -> list[str]:
    """The last lines of ansible-playbook's output (redacted): the only clue when a playbook fails to parse."""
    try:
        text = runner.stdout.read()
    except (OSError, AttributeError, ValueError):
        return []
    kept = [line.rstrip() for line in str(text).splitlines() if line.strip()][-lines:]
    return [report_mod.redact_text(line, literals) for line in kept]


def _find_report(index_file: Path, report_dir: Path | None, run_id: str) -> Path | None:
    """The JSON report the callback wrote for this run (it names it in the index file we gave it)."""
    with contextlib.suppress(OSError, ValueError):
        written = json.loads(index_file.read_text(encoding="utf-8"))
        path = Path(written["json"])
        if path.is_file():
            return path
    if report_dir is not None:
        found = sorted(report_dir.glob(f"*-{run_id}.json"))
        if found:
            return found[-1]
    return None
