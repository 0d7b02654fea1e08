"""The application's footprint of the whole migrate.yml (`python -m bench.footprint`): what the live application
sees while preflight, the backup (pg_dump and preflight's probes on their sessions), the migration and the
verification (the SQL suite beside capital_check's sessions) run one after the other.

bench.run's footprint runs the migrate stage alone, in-process; this runs the same pgbench load (the same
scripts, rate and clients) first without a migration, then with `ansible-playbook migrate.yml` started 3 s in,
on fresh copies of one dataset, and prints both as one table: transactions, failed transactions, p50/p99/max
over the whole load and inside the run's window, the longest lock wait of an application session, and
capital_check after the run. Raw results go to bench/results/footprint-<UTC time>.json.
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--seconds", type=int, default=75, help="length of each load run (the run must fit)")
    parser.add_argument("--rate", type=int, default=40, help="pgbench -R (transactions per second)")
    parser.add_argument("-e", dest="extra_vars", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra variable for migrate.yml (repeatable)")
    args = parser.parse_args()
    results: dict[str, Any] = {"size": args.size, "seconds": args.seconds, "rate": args.rate,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-footprint-") as tmp:
        B.prepare(pg, args.size, 1)
        tpl, workdir = f"tpl_{args.size}", Path(tmp)
        results["baseline"] = B.load_run(pg, tpl, workdir, "base", args.seconds, args.rate, migrate=False)
        results["extra_vars"] = args.extra_vars
        results["whole_run"] = B.load_run(pg, tpl, workdir, "whole", args.seconds, args.rate, migrate=True,
                                          whole_run=True, extra_vars=args.extra_vars)
    out = B.ROOT / "bench" / "results" / f"footprint-{results['started'].replace(':', '').replace('-', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(table(args.size, results["baseline"], results["whole_run"]))
    print(f"raw: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
