#!/usr/bin/python
"""Ansible module capital_backup_seal: move a finished dump into place, verify it, checksum it, describe it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_backup_seal
short_description: Seal a finished pg_dump - move it into place, verify, checksum and write its manifest
description:
  - Runs on the host that ran C(pg_dump), right after it wrote I(partial). In order, stopping at the first
    failure - refuses when I(path) exists (a backup is never overwritten); reads the table of contents of
    I(partial) with C(pg_restore --list) (an empty list fails) and then every entry, data included, with
    C(pg_restore --file=-), counting the rows of every table's data block on the way (a dump cut short or
    damaged anywhere fails, and stays under its C(.partial) name); computes its sha256 and size; asks
    C(pg_dump --version); renames I(partial) to I(path) within its directory; restricts it to its owner
    (files 0600, directories 0700); writes C(<path>.manifest.json) (0600, never over an existing file).
  - A custom-format dump is hashed as one file. A directory dump has no single file to hash, so its sha256
    is the sha256 of the sorted C("<sha256>  <file name>") lines of its files, which
    C(cd DIR && sha256sum * | sha256sum) reproduces.
  - The row counts and the server version in the manifest are those of the dump itself (its data blocks
    and its header), so they hold exactly, whatever the application wrote while C(pg_dump) ran; a test
    restore must give back these counts.
  - One module call instead of a task per step, each costing a module start-up (BENCHMARKS.md).
  - Reads no database and takes no credentials.
version_added: 0.2.0
author: prestamos capital-tracking project
options:
  partial:
    description: The file or directory C(pg_dump) has just finished writing.
    type: path
    required: true
  path:
    description: Where the dump goes; must not exist yet, and must be in the directory of I(partial).
    type: path
    required: true
  format:
    description: C(custom) (one file) or C(directory) (the C(pg_dump --format=directory) layout).
    type: str
    choices: [custom, directory]
    required: true
  manifest:
    description:
      - What the run knows about the dump (database, environment, start time); the module adds C(file),
        C(format), C(size), C(sha256), C(sha256_method), C(toc_entries), C(server_version) (from the
        dump's header), C(row_counts), C(pg_dump_version) and C(time) (UTC), which win over keys of the same
        name.
    type: dict
    required: true
  row_counts_of:
    description:
      - Tables (unqualified names of schema C(public), or C(schema.table)) whose rows the manifest's
        C(row_counts) lists, counted in the dump's data blocks. A table missing from the dump fails.
    type: list
    elements: str
    default: []
  pg_restore:
    description: The C(pg_restore) executable.
    type: str
    default: pg_restore
  pg_dump:
    description: The C(pg_dump) executable whose version goes into the manifest.
    type: str
    default: pg_dump
  list_pattern:
    description:
      - A regular expression; the names in the dump's directory that match it are returned in
        RV(siblings), sorted (the backup role's retention uses it instead of a separate C(find)).
    type: str
    default: "^$"
attributes:
  check_mode:
    support: none
    description: It moves and writes files; the backup role does not call it under --check.
  diff_mode:
    support: none
    description: Nothing to diff.
notes:
  - The rename is within one directory, so it is atomic; I(path) is checked first, and C(pg_dump) itself
    writes only to I(partial).
"""

EXAMPLES = r"""
- name: backup | Seal the dump
  prestamos.capital.capital_backup_seal:
    partial: /var/backups/capital/prod-loans-20261201T120000Z.dump.partial
    path: /var/backups/capital/prod-loans-20261201T120000Z.dump
    format: custom
    manifest:
      database: loans
      capital_env: prod
      dump_started: 20261201T120000Z
    row_counts_of: [Junta, Accion]
"""

RETURN = r"""
path:
  description: The sealed dump.
  returned: success
  type: str
manifest_path:
  description: The manifest written next to it.
  returned: success
  type: str
manifest:
  description: The manifest's content.
  returned: success
  type: dict
sha256:
  description: The dump's sha256 (see the description for directory dumps).
  returned: success
  type: str
size:
  description: Bytes (the sum over the files of a directory dump).
  returned: success
  type: int
toc_entries:
  description: Entries in the table of contents C(pg_restore --list) printed.
  returned: success
  type: int
row_counts:
  description: Rows in the dump's data block of each table of I(row_counts_of).
  returned: success
  type: dict
  sample: {"Junta": 2750, "Accion": 411507}
siblings:
  description: Names in the dump's directory matching I(list_pattern), sorted.
  returned: success
  type: list
  elements: str
"""

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

_TOC_ENTRY = re.compile(r"^\d+;", re.MULTILINE)
_SERVER_VERSION = re.compile(r"^;\s+Dumped from database version: (.+)$", re.MULTILINE)
_COPY = re.compile(rb'^COPY ((?:"(?:[^"]|"")*"|[^ ".]+)(?:\.(?:"(?:[^"]|"")*"|[^ ".]+))?) ')


def _table_name(qualified: str) -> str:
    """'public."Accion"' -> 'Accion'; 'other.t' -> 'other.t' (the manifest's keys)."""
    parts = re.findall(r'"((?:[^"]|"")*)"|([^".]+)', qualified)
    names = [quoted.replace('""', '"') if quoted else plain for quoted, plain in parts]
    return names[-1] if names[0] == "public" and len(names) == 2 else ".".join(names)


def read_every_entry(pg_restore: str, partial: Path) -> tuple[int, dict[str, int], str]:
    """pg_restore the whole archive to a script read here and thrown away: every data block is read and
    decompressed (a dump cut short or damaged anywhere makes pg_restore fail), and each table's COPY block
    is counted line by line (COPY text data escapes newlines, so a line is a row).
    Returns (exit status, rows per table, stderr)."""
    counts: dict[str, int] = {}
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen([pg_restore, "--file=-", str(partial)], stdout=subprocess.PIPE, stderr=errors) as proc:
            assert proc.stdout is not None
            table: str | None = None
            for line in proc.stdout:
                if table is not None:
                    if line == b"\\.\n":
                        table = None
                    else:
                        counts[table] += 1
                elif line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                    match = _COPY.match(line)
                    table = _table_name(match.group(1).decode()) if match else line.decode(errors="replace")
                    counts.setdefault(table, 0)
        errors.seek(0)
        return proc.returncode, counts, errors.read().decode(errors="replace")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dump_digest(path: Path, fmt: str) -> tuple[str, int, str]:
    """(sha256, size, sha256_method) of a custom-format file or a directory dump."""
    if fmt == "custom":
        return file_sha256(path), path.stat().st_size, "file"
    files = sorted(p for p in path.iterdir() if p.is_file())
    lines = "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
    size = sum(p.stat().st_size for p in files)
    return hashlib.sha256(lines.encode()).hexdigest(), size, "sha256 of sorted sha256sum lines of the directory files"


def restrict(path: Path, fmt: str) -> None:
    """Owner only: 0600 files, 0700 directories (pg_dump ran under umask 077; this also covers a leftover)."""
    if fmt == "custom":
        path.chmod(0o600)
        return
    path.chmod(0o700)
    for p in path.iterdir():
        p.chmod(0o700 if p.is_dir() else 0o600)


def write_new(path: Path, text: str) -> None:
    """Create path 0600 with text; an existing file is an error, never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "partial": {"type": "path", "required": True},
            "path": {"type": "path", "required": True},
            "format": {"type": "str", "required": True, "choices": ["custom", "directory"]},
            "manifest": {"type": "dict", "required": True},
            "pg_restore": {"type": "str", "default": "pg_restore"},
            "pg_dump": {"type": "str", "default": "pg_dump"},
            "list_pattern": {"type": "str", "default": "^$"},
            "row_counts_of": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=False,
    )
    p = module.params
    partial, path, fmt = Path(p["partial"]), Path(p["path"]), p["format"]
    manifest_path = Path(f"{path}.manifest.json")
    if partial.parent != path.parent:
        module.fail_json(msg=f"partial ({partial}) and path ({path}) must be in the same directory")
    if os.path.lexists(path) or os.path.lexists(manifest_path):
        module.fail_json(msg=f"{path} (or its manifest) already exists: a backup is never overwritten. Rerun.")
    if not partial.exists():
        module.fail_json(msg=f"{partial} does not exist: pg_dump did not finish writing it")
    rc, out, err = module.run_command([p["pg_restore"], "--list", str(partial)])
    entries = len(_TOC_ENTRY.findall(out))
    if rc != 0 or entries == 0:
        module.fail_json(
            msg=f"pg_restore --list could not read {partial} (exit {rc}, {entries} entries): {err.strip()[-1000:]}. "
            "The dump is incomplete or corrupt and was left under its .partial name (no backup pattern matches "
            "it): no migration may start without a verified backup. Look at it, remove it and rerun.",
        )
    server_version = _SERVER_VERSION.search(out)
    # --list reads only the table of contents; converting the archive to a script nobody keeps reads and
    # decompresses every data block too, so a dump cut short or damaged anywhere fails here.
    rc, counts, err = read_every_entry(p["pg_restore"], partial)
    if rc != 0:
        module.fail_json(
            msg=f"pg_restore could not read every entry of {partial} (exit {rc}): {err.strip()[-1000:]}. "
            "The dump is incomplete or corrupt and was left under its .partial name (no backup pattern matches "
            "it): no migration may start without a verified backup. Look at it, remove it and rerun.",
        )
    missing = [t for t in p["row_counts_of"] if t not in counts]
    if missing:
        module.fail_json(
            msg=f"{partial} holds no data for {', '.join(missing)}: not a dump of this database's tables "
            f"(tables in it: {', '.join(sorted(counts)) or 'none'}). It was left under its .partial name.",
        )
    row_counts = {t: counts[t] for t in p["row_counts_of"]}
    sha256, size, method = dump_digest(partial, fmt)
    rc, version, err = module.run_command([p["pg_dump"], "--version"])
    if rc != 0:
        module.fail_json(msg=f"{p['pg_dump']} --version failed (exit {rc}): {err.strip()}")
    os.rename(partial, path)
    restrict(path, fmt)

    manifest: dict[str, Any] = {
        **p["manifest"],
        "file": path.name,
        "format": fmt,
        "size": size,
        "sha256": sha256,
        "sha256_method": method,
        "toc_entries": entries,
        "server_version": server_version.group(1).strip() if server_version else "",
        "row_counts": row_counts,
        "pg_dump_version": version.strip(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_new(manifest_path, json.dumps(manifest, indent=4, sort_keys=True, separators=(",", ": ")) + "\n")
    pattern = re.compile(p["list_pattern"])
    siblings = sorted(name for name in os.listdir(path.parent) if pattern.search(name))
    module.exit_json(
        changed=True,
        path=str(path),
        manifest_path=str(manifest_path),
        manifest=manifest,
        sha256=sha256,
        size=size,
        toc_entries=entries,
        row_counts=row_counts,
        siblings=siblings,
    )


if __name__ == "__main__":
    main()
