"""The application's footprint of the whole migrate.yml (`python -m bench.footprint`): what the live application
sees while preflight, the backup (pg_dump and preflight's probes on their sessions), the migration and the
verification (the SQL suite beside capital_check's sessions) run one after the other.

bench.run's footprint runs the migrate stage alone, in-process; this runs the same pgbench load (the same
scripts, rate and clients) first without a migration, then with `ansible-playbook migrate.yml` started 3 s in,
on fresh copies of one dataset, and prints both as one table: transactions, failed transactions, p50/p99/max
over the whole load and inside the run's window, the longest lock wait of an application session, and
capital_check after the run. Raw results go to bench/results/footprint-<UTC time>.json.

With checkouts (`NAME=ROOT ...`, bench.stages' form) it compares them side by side: after one warm-up run of
the floor, each of `--rounds` rounds runs a baseline load and then every checkout's migrate.yml on fresh
copies (the order alternating from round to round), and prints each stage's p99 and its ratio to the same
round's baseline p99: did a change make the application's tail worse?

`--controls` adds, to each round and under the same load, work that is not the migration, to tell what part
of the tail any run on this machine would cause:
  noop  a play of as many module runs as the last migrate.yml ran (bench/noop.yml; counted by
        bench/callback_plugins), none of them touching the database: Ansible alone, beside the server;
  dump  a bare pg_dump --format=custom --compress=1 (the backup role's own) of the database, nothing else;
  nice  the first checkout's migrate.yml under `nice -n 19` (Ansible, its modules, psql and pg_dump; not the
        server's backends).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from capital_migrate.pgtmp import Cluster

from bench import run as B


def fmt_ms(lat: dict[str, Any]) -> str:
    """p50 / p99 / max in ms."""
    return " / ".join("-" if lat.get(k) is None else f"{lat[k]:.2f}" for k in ("p50_ms", "p99_ms", "max_ms")) + " ms"


def table(size: str, base: dict[str, Any], whole: dict[str, Any]) -> str:
    """The Markdown table of one baseline and one whole-run load."""
    run = whole.get("migration", {})
    during = whole.get("during_migration", {})
    stages = " / ".join(f"{k} {v:.1f}" for k, v in (run.get("stages") or {}).items())
    check = whole.get("capital_check", {})
    rows = [
        ("transactions / failed", f"{base['all']['transactions']} / {base['all']['failed']}",
         f"{whole['all']['transactions']} / {whole['all']['failed']}",
         f"{during.get('transactions', '-')} / {during.get('failed', '-')}"),
        ("p50 / p99 / max", fmt_ms(base["all"]), fmt_ms(whole["all"]), fmt_ms(during) if during else "-"),
        ("migrate.yml", "-",
         f"exit {run.get('rc')}, {run.get('outcome')}, {run.get('wall', 0):.1f} s ({stages} s)", ""),
        ("longest application lock wait (100 ms sampling)", f"{base.get('app_lock_wait_any_s', 0):.2f} s",
         f"{whole.get('app_lock_wait_any_s', 0):.2f} s", ""),
        ("capital_check after the run", "-",
         f"{check.get('discrepancy_count', '?')} discrepancies, {check.get('juntas_checked', '?')} juntas", ""),
    ]
    rows += [(f"p50 / p99 / max during stage {name}", "", fmt_ms(lat), f"{lat['transactions']} / {lat['failed']}")
             for name, lat in (whole.get("per_stage") or {}).items()]
    lines = [f"| whole migrate.yml under load ({size}) | baseline | with migrate.yml | during migrate.yml |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


CONTROLS = ("noop", "dump", "nice")


def controls(text: str) -> list[str]:
    """--controls noop,dump,nice"""
    names = [n for n in text.split(",") if n]
    if not names or set(names) - set(CONTROLS):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(CONTROLS)}")
    return names


def control(name: str, pg: Cluster, workdir: Path, root: Path, module_runs: int) -> Any:
    """The work of one control (see the module's text) as bench.run.load_run's `work`."""
    def noop(db: str) -> dict[str, Any]:
        return B.playbook_on(pg, db, workdir, playbook="bench/noop.yml", extra_vars=[f"bench_noop_tasks={module_runs}"])

    def dump(db: str) -> dict[str, Any]:
        target = workdir / "control.dump"
        began = time.monotonic()
        B.run(["pg_dump", "--format=custom", "--compress=1", f"--file={target}"], B.tool_env(pg, db))
        target.unlink()
        return {"wall": time.monotonic() - began, "rc": 0}

    def nice(db: str) -> dict[str, Any]:
        with B.rooted(root):
            return B.playbook_on(pg, db, workdir, prefix=["nice", "-n", "19"])

    return {"noop": noop, "dump": dump, "nice": nice}[name]


def whole_run_on(root: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """B.load_run of migrate.yml from another checkout (its roles, collection and ansible.cfg)."""
    with B.rooted(root):
        return B.load_run(*args, **kwargs)


def ratio(lat: dict[str, Any], base: dict[str, Any]) -> float | None:
    """A window's p99 over its round's baseline p99."""
    if lat.get("p99_ms") is None or not base["all"].get("p99_ms"):
        return None
    return float(lat["p99_ms"]) / float(base["all"]["p99_ms"])


def side_by_side(rounds: list[dict[str, Any]], names: list[str]) -> str:
    """The Markdown table of checkouts measured in the same rounds: p99 and p99 / the round's baseline p99."""
    lines = ["| per stage | " + " | ".join(f"{n}: p99 ms | {n}: p99 / baseline" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    base = [r["baseline"]["all"]["p99_ms"] for r in rounds]
    lines.append("| baseline (no migration) | " + " | ".join(f"{B.spread(base)} | 1" for _ in names) + " |")
    quiet = [w / r["baseline"]["all"]["p99_ms"] for r in rounds for w in r["baseline"].get("quiet_windows_p99_ms", [])
             if w is not None]
    if quiet:
        lines.append(f"| the baseline's own {B.QUIET_WINDOW_S} s windows | | {B.spread(quiet)} |"
                     + " | |" * (len(names) - 1))
    for stage in ("preflight", "backup", "migrate", "verify", None):
        cells = []
        for name in names:
            runs = [(r[name], r["baseline"]) for r in rounds]
            lats = [(w.get("per_stage", {}).get(stage) if stage else w.get("during_migration"), b) for w, b in runs]
            p99 = [lat["p99_ms"] for lat, _ in lats if lat and lat.get("p99_ms") is not None]
            rel = [x for lat, b in lats if lat and (x := ratio(lat, b)) is not None]
            cells.append(f"{B.spread(p99)} | {B.spread(rel)}")
        lines.append(f"| {stage or 'whole run'} | " + " | ".join(cells) + " |")
    for label, key in (("failed transactions", "failed"), ("transactions", "transactions")):
        cells = [" / ".join(str(r[n].get("during_migration", {}).get(key, "-")) for r in rounds) + " | "
                 for n in names]
        lines.append(f"| {label} during the run | " + " | ".join(cells) + " |")
    cells = [" / ".join(f"{r[n].get('migration', {}).get('wall', 0):.1f}" for r in rounds) + " s | " for n in names]
    lines.append("| migrate.yml wall | " + " | ".join(cells) + " |")
    cells = [" / ".join(str(r[n].get("capital_check", {}).get("discrepancy_count", "?")) for r in rounds) + " | "
             for n in names]
    lines.append("| capital_check discrepancies after | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", metavar="NAME=ROOT",
                        help="checkouts to compare side by side (none: this one, one round)")
    parser.add_argument("--size", default="medium")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of a baseline and each checkout's run")
    parser.add_argument("--seconds", type=int, default=75, help="length of each load run (the run must fit)")
    parser.add_argument("--rate", type=int, default=40, help="pgbench -R (transactions per second)")
    parser.add_argument("--controls", type=controls, default=[], metavar="|".join(CONTROLS),
                        help="comma-separated: work that is not the migration, under the same load in every round")
    parser.add_argument("--noop-runs", type=int, default=9,
                        help="module runs of the noop control before a migrate.yml of the round counted them"
                             " (9 at 239503a)")
    parser.add_argument("-e", dest="extra_vars", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra variable for migrate.yml (repeatable)")
    args = parser.parse_args()
    roots = B.checkouts(args.versions)
    results: dict[str, Any] = {"size": args.size, "seconds": args.seconds, "rate": args.rate,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "extra_vars": args.extra_vars}
    stamp = results["started"].replace(":", "").replace("-", "")
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-footprint-") as tmp:
        B.prepare(pg, args.size, 1)
        tpl, workdir = f"tpl_{args.size}", Path(tmp)
        if not roots and not args.controls:
            results["baseline"] = B.load_run(pg, tpl, workdir, "base", args.seconds, args.rate, migrate=False)
            results["whole_run"] = B.load_run(pg, tpl, workdir, "whole", args.seconds, args.rate, migrate=True,
                                              whole_run=True, extra_vars=args.extra_vars)
        else:
            # The first run on a new cluster creates its WAL segments as it writes them (zero-filled on
            # the commit path); the floor's run first leaves every measured run the same recycled pool.
            results["warm_up_floor_s"] = B.measure_floor(pg, tpl)
            B.psql(pg, "postgres", "-c", "CHECKPOINT")  # recycles the segments the floor wrote
            results["rounds"] = []
            module_runs = args.noop_runs
            for n in range(args.rounds):
                one: dict[str, Any] = {"baseline": B.load_run(pg, tpl, workdir, "base", args.seconds, args.rate,
                                                              migrate=False)}
                items = list(roots) + args.controls
                order = items if n % 2 == 0 else list(reversed(items))
                for name in order:
                    print(f"[bench.footprint] round {n + 1}/{args.rounds}: {name}", flush=True)
                    if name in roots:
                        one[name] = whole_run_on(roots[name], pg, tpl, workdir, name, args.seconds, args.rate,
                                                 migrate=True, whole_run=True, extra_vars=args.extra_vars)
                        module_runs = one[name]["migration"].get("module_runs", module_runs)
                    else:  # round 1 runs the checkouts first: noop needs migrate.yml's module runs
                        work = control(name, pg, workdir, next(iter(roots.values()), B.ROOT), module_runs)
                        one[name] = B.load_run(pg, tpl, workdir, name, args.seconds, args.rate, migrate=True,
                                               work=work)
                results["rounds"].append(one)
    out = B.ROOT / "bench" / "results" / f"footprint-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    if roots or args.controls:
        print(side_by_side(results["rounds"], list(roots) + args.controls))
    else:
        print(table(args.size, results["baseline"], results["whole_run"]))
    print(f"raw: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
