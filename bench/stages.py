"""migrate.yml of two checkouts side by side, stage by stage (`python -m bench.stages`): did a change to the
roles make the whole run faster?

One throwaway cluster and one dataset; per round the floor and a plain pg_dump (the whole run's reference),
then migrate.yml from each checkout on fresh copies, interleaved, so every ratio comes from measurements
taken side by side. Each checkout runs with its own ansible.cfg and collection (ANSIBLE_CONFIG, cwd). An
older commit, without a git worktree:

    mkdir /tmp/old && git archive <commit> | tar -x -C /tmp/old
    ln -s $PWD/.venv /tmp/old/.venv && ln -s $PWD/collections/ansible_collections /tmp/old/collections/
    .venv/bin/python -m bench.stages --size medium --runs 2 old=/tmp/old new=.
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

STAGES = ("preflight", "backup", "migrate", "verify")


def playbook(pg: Cluster, tpl: str, root: Path, workdir: Path) -> dict[str, Any]:
    """bench.run.measure_playbook with another checkout as the root (its roles, collection and ansible.cfg)."""
    with B.rooted(root):
        return B.measure_playbook(pg, tpl, workdir)


median = B.spread


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs=2, metavar="NAME=ROOT", help="two checkouts of the project")
    parser.add_argument("--size", default="medium", choices=sorted(B.JUNTAS))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args()
    roots = B.checkouts(args.versions)
    res: dict[str, Any] = {"size": args.size, "floor": [], "plain": [], "runs": {n: [] for n in roots}}
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        workdir = Path(tmp)
        res["dataset"] = B.prepare(pg, args.size, args.seed)
        tpl = f"tpl_{args.size}"
        for n in range(args.runs):
            res["floor"].append(B.measure_floor(pg, tpl))
            res["plain"].append(B.measure_dumps(pg, tpl, workdir)["plain"]["seconds"])
            for name, root in roots.items():
                print(f"[bench.stages] round {n + 1}/{args.runs}: {name}", flush=True)
                res["runs"][name].append(playbook(pg, tpl, root, workdir))
    ref = [f + p for f, p in zip(res["floor"], res["plain"], strict=True)]
    print(f"\nfloor {median(res['floor'])} s, plain pg_dump {median(res['plain'])} s\n")
    print("| measure (" + args.size + ") | " + " | ".join(roots) + " |")
    print("|---|" + "---|" * len(roots))
    rows = [("whole run", "wall")] + [(f"stage {s}", s) for s in STAGES]
    for label, key in rows:
        cells = []
        for name in roots:
            good = [r for r in res["runs"][name] if r.get("rc") == 0]
            values = [r["wall"] if key == "wall" else r.get("stages", {}).get(key, 0.0) for r in good]
            cells.append(median(values) + " s" if values else "failed")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name in roots:
        good = [(r, f) for r, f in zip(res["runs"][name], ref, strict=True) if r.get("rc") == 0]
        whole = [r["wall"] / f for r, f in good]
        mig = [r["stages"]["migrate"] / fl for (r, _), fl in zip(good, res["floor"], strict=False)]
        print(f"{name}: whole run {median(whole)} x (floor + plain dump); migrate stage {median(mig)} x floor")
        for r in res["runs"][name]:
            if r.get("rc") != 0:
                print(f"{name}: a run failed (rc {r.get('rc')}): {r.get('error', '')[-600:]}")
    out = args.out or B.BENCH / "results" / time.strftime("stages-%Y-%m-%dT%H%M%SZ.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"raw: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
