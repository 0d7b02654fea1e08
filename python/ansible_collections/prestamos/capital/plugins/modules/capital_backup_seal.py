#!/usr/bin/python
"""Ansible module capital_backup_seal: move a finished dump into place, verify it, checksum it, describe it;
and, before a restore, choose a dump by identity and check it against its manifest (mode=verify)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_backup_seal
short_description: Seal a finished pg_dump (move, verify, checksum, manifest), or verify one before a restore
description:
  - I(mode=seal) runs on the host that ran C(pg_dump), right after it wrote I(partial). In order, stopping at the first
    failure - refuses when I(path) exists (a backup is never overwritten); reads the table of contents of
    I(partial) with C(pg_restore --list) (an empty list fails) and then every entry, data included, with
    C(pg_restore --file=-), counting the rows of every table's data block on the way (a dump cut short or
    damaged anywhere fails, and stays under its C(.partial) name); computes its sha256 and size; asks
    C(pg_dump --version); renames I(partial) to I(path) within its directory; restricts it to its owner
    (files 0600, directories 0700); writes C(<path>.manifest.json) (0600, never over an existing file).
  - A custom-format dump is hashed as one file. A directory dump has no single file to hash, so its sha256
    is the sha256 of the C("<sha256>  <relative path>") lines of its files sorted by path, which
    C(cd DIR && sha256sum * | sha256sum) reproduces (C(pg_dump --format=directory) writes no subdirectories).
  - I(mode=verify) changes nothing. It takes the dump I(path), or else the newest (by name) of the names in
    I(directory) matching I(list_pattern) whose manifest shows the expected identity, skipping the others (each
    named in RV(skipped) with the reason). Identity - the manifest's C(database) must equal I(source_database)
    (default the target's, I(expect.database)); without I(source_database) the manifest's
    C(system_identifier) must also equal I(expect.system_identifier) when both are known (a null on either
    side leaves the database name as the only check, and RV(identity_note) says so). A chosen dump of
    another identity is refused naming both. Then the dump's sha256, computed exactly as I(mode=seal) did for
    its format, must equal the manifest's, so custom and directory dumps verify alike.
  - The row counts and the server version in the manifest are those of the dump itself (its data blocks
    and its header), so they hold exactly, whatever the application wrote while C(pg_dump) ran; a test
    restore must give back these counts.
  - One module call instead of a task per step, each costing a module start-up (BENCHMARKS.md).
  - Reads no database and takes no credentials.
version_added: 0.2.0
author: prestamos capital-tracking project (@prestamos)
options:
  mode:
    description: C(seal) a dump C(pg_dump) has just written, or C(verify) one before a restore.
    type: str
    choices: [seal, verify]
    default: seal
    version_added: 0.3.0
  partial:
    description: The file or directory C(pg_dump) has just finished writing. Required with I(mode=seal).
    type: path
  path:
    description:
      - With I(mode=seal), where the dump goes; must not exist yet, and must be in the directory of I(partial).
        Required.
      - With I(mode=verify), the dump to verify; empty means the newest matching one in I(directory).
    type: path
  format:
    description:
      - C(custom) (one file) or C(directory) (the C(pg_dump --format=directory) layout). Required with
        I(mode=seal); I(mode=verify) reads it from the manifest.
    type: str
    choices: [custom, directory]
  manifest:
    description:
      - What the run knows about the dump (database, its cluster's system identifier, environment, start
        time); the module adds C(file), C(format), C(size), C(sha256), C(sha256_method), C(toc_entries),
        C(server_version) (from the dump's header), C(row_counts), C(pg_dump_version) and C(time) (UTC),
        which win over keys of the same name. Required with I(mode=seal).
    type: dict
  directory:
    description: With I(mode=verify) and no I(path), where to look for dumps.
    type: path
    version_added: 0.3.0
  expect:
    description:
      - With I(mode=verify), the target's identity (required). Keys C(database) (C(current_database()) of
        the target) and C(system_identifier) (its cluster's, a string, or null when it could not be read).
    type: dict
    version_added: 0.3.0
  source_database:
    description:
      - With I(mode=verify), restore a dump of this database on purpose (disaster recovery into another
        database or onto a new host). The manifest's C(database) must then equal it, and the system
        identifiers are not compared. Empty means the target's own dumps only.
    type: str
    default: ""
    version_added: 0.3.0
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
      - With I(mode=seal), a regular expression; the names in the dump's directory that match it are
        returned in RV(siblings), sorted (the backup role's retention uses it instead of a separate C(find)).
      - With I(mode=verify) and no I(path), the names in I(directory) that are candidates.
    type: str
    default: "^$"
attributes:
  check_mode:
    support: none
    description:
      - I(mode=seal) moves and writes files; the backup role does not call it under --check. I(mode=verify)
        only reads, and the rollback role runs it with C(check_mode=false).
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

- name: rollback | Choose the dump to restore and verify it
  prestamos.capital.capital_backup_seal:
    mode: verify
    directory: /var/backups/capital
    list_pattern: '^prod-loans-[0-9]{8}T[0-9]{6}Z\.dump$'
    expect:
      database: loans
      system_identifier: "7714703450346943047"
  check_mode: false
"""

RETURN = r"""
path:
  description: The sealed dump, or the dump verified.
  returned: success
  type: str
manifest_path:
  description: The manifest written next to it, or read.
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
  returned: I(mode=seal)
  type: list
  elements: str
identity_checked:
  description: What of the identity was compared, C(database) and, when known on both sides, C(system_identifier).
  returned: I(mode=verify)
  type: list
  elements: str
identity_note:
  description: Why the system identifiers were not compared (empty when they were).
  returned: I(mode=verify)
  type: str
skipped:
  description: Candidates newer than the chosen dump that were passed over, each with C(file) and C(reason).
  returned: I(mode=verify)
  type: list
  elements: dict
"""

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.prestamos.capital.plugins.module_utils.dumpfile import dump_digest, read_every_entry

_TOC_ENTRY = re.compile(r"^\d+;", re.MULTILINE)
_SERVER_VERSION = re.compile(r"^;\s+Dumped from database version: (.+)$", re.MULTILINE)


def restrict(path: Path, fmt: str) -> None:
    """Owner only: 0600 files, 0700 directories (pg_dump ran under umask 077; this also covers a leftover)."""
    if fmt == "custom":
        path.chmod(0o600)
        return
    path.chmod(0o700)
    for p in path.iterdir():
        p.chmod(0o700 if p.is_dir() else 0o600)


def fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_database(dump: Path) -> object:
    """The database a dump's manifest names (None when it has no readable manifest)."""
    try:
        return json.loads(Path(f"{dump}.manifest.json").read_text(encoding="utf-8")).get("database")
    except (OSError, ValueError, AttributeError):
        return None


def write_new(path: Path, text: str) -> None:
    """Create path 0600 with text; an existing file is an error, never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class Refused(Exception):
    """A dump that must not be restored here; the message says why and what to do."""


def describe(database: object, system_identifier: object) -> str:
    known = system_identifier if system_identifier not in (None, "") else "unknown"
    return f"database '{database}' (cluster system identifier {known})"


def identity_mismatch(manifest: dict[str, Any], expect: dict[str, Any], source_database: str) -> str | None:
    """Why a dump with this manifest is not the one to restore into the target `expect`, or None.
    The database must be the target's (or the named source's); the cluster only when no source is named."""
    wanted = source_database or expect.get("database")
    if manifest.get("database") != wanted:
        return (f"it is a backup of {describe(manifest.get('database'), manifest.get('system_identifier'))}, "
                f"the target is {describe(expect.get('database'), expect.get('system_identifier'))}"
                + (f" and the source named is '{source_database}'" if source_database else ""))
    ours, theirs = expect.get("system_identifier"), manifest.get("system_identifier")
    if not source_database and ours and theirs and str(ours) != str(theirs):
        return (f"it is a backup of {describe(manifest.get('database'), theirs)}, another cluster than the "
                f"target, {describe(expect.get('database'), ours)}")
    return None


def identity_checked(manifest: dict[str, Any], expect: dict[str, Any], source_database: str) -> tuple[list[str], str]:
    """What the identity check compared, and why the system identifiers were not (empty when they were)."""
    if source_database:
        return ["database"], f"source database '{source_database}' named: system identifiers not compared"
    missing = [side for side, value in (("the manifest", manifest.get("system_identifier")),
                                        ("the target", expect.get("system_identifier"))) if not value]
    if missing:
        return ["database"], (f"no system identifier in {' or '.join(missing)}: only the database name was "
                              "compared")
    return ["database", "system_identifier"], ""


def read_manifest(dump: Path) -> dict[str, Any]:
    """The manifest next to `dump`; OSError or ValueError when it is missing or not a JSON object."""
    data = json.loads(Path(f"{dump}.manifest.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def choose(directory: Path, pattern: str, expect: dict[str, Any], source_database: str,
           ) -> tuple[Path, dict[str, Any], list[dict[str, str]]]:
    """The newest dump (names sort by time) in `directory` matching `pattern` whose manifest shows the
    expected identity, its manifest, and the newer candidates passed over with the reason."""
    regex = re.compile(pattern)
    names = sorted((n for n in os.listdir(directory) if regex.search(n)), reverse=True) if directory.is_dir() else []
    skipped: list[dict[str, str]] = []
    for name in names:
        try:
            manifest = read_manifest(directory / name)
        except (OSError, ValueError) as exc:
            skipped.append({"file": name, "reason": f"no readable manifest ({exc.__class__.__name__})"})
            continue
        reason = identity_mismatch(manifest, expect, source_database)
        if reason is None:
            return directory / name, manifest, skipped
        skipped.append({"file": name, "reason": reason})
    passed = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped) or "no file name matches"
    wanted = (f"database '{source_database}'" if source_database
              else describe(expect.get("database"), expect.get("system_identifier")))
    raise Refused(f"No backup of {wanted} in {directory} ({passed}). Nothing was changed. Pass the dump with "
                  "-e capital_rollback_backup_file=PATH, or use the reverse migration (capital_rollback_mode=reverse).")


def verify(path: Path, manifest: dict[str, Any], expect: dict[str, Any], source_database: str) -> str:
    """Refuse `path` unless its manifest shows the expected identity and its sha256 matches; the sha256."""
    reason = identity_mismatch(manifest, expect, source_database)
    if reason is not None:
        source = manifest.get("database")
        raise Refused(f"Refusing to restore {path}: {reason}. Nothing was changed. To restore a backup of "
                      f"another database into this one on purpose (disaster recovery onto a new host), name its "
                      f"source: -e capital_rollback_restore_from_database={source}.")
    fmt = manifest.get("format", "custom")
    if fmt not in ("custom", "directory"):
        raise Refused(f"Refusing to restore {path}: its manifest names an unknown format {fmt!r}. Nothing was changed.")
    actual = "(missing file)"
    if path.is_dir() if fmt == "directory" else path.is_file():
        actual = dump_digest(path, fmt)[0]
    elif path.exists():
        actual = f"(not a {fmt}-format dump)"
    if actual != manifest.get("sha256"):
        raise Refused(f"Refusing to restore {path}: its sha256 is {actual} but its manifest records "
                      f"{manifest.get('sha256')}. The dump is damaged or was replaced. Nothing was changed; restore "
                      "another verified backup or use the reverse migration.")
    return actual


def verify_mode(module: AnsibleModule) -> None:
    """mode=verify: choose (or take) a dump, check its identity and its sha256; changes nothing."""
    p = module.params
    expect, source = p["expect"], p["source_database"] or ""
    try:
        skipped: list[dict[str, str]] = []
        if p["path"]:
            path = Path(p["path"])
            try:
                manifest = read_manifest(path)
            except (OSError, ValueError) as exc:
                raise Refused(f"Refusing to restore {path}: its manifest {path}.manifest.json cannot be read "
                              f"({exc}). Nothing was changed; restore a verified backup.") from exc
        else:
            if not p["directory"]:
                module.fail_json(msg="mode=verify needs path or directory")
            path, manifest, skipped = choose(Path(p["directory"]), p["list_pattern"], expect, source)
        sha256 = verify(path, manifest, expect, source)
    except Refused as exc:
        module.fail_json(msg=str(exc), refused=True)
    checked, note = identity_checked(manifest, expect, source)
    module.exit_json(changed=False, path=str(path), manifest_path=f"{path}.manifest.json", manifest=manifest,
                     sha256=sha256, identity_checked=checked, identity_note=note, skipped=skipped)


def seal_mode(module: AnsibleModule) -> None:
    """mode=seal: verify, checksum, move into place and describe a dump pg_dump has just written."""
    p = module.params
    partial, path, fmt = Path(p["partial"]), Path(p["path"]), p["format"]
    manifest_path = Path(f"{path}.manifest.json")
    if partial.parent != path.parent:
        module.fail_json(msg=f"partial ({partial}) and path ({path}) must be in the same directory")
    if os.path.lexists(path) or os.path.lexists(manifest_path):
        module.fail_json(msg=f"{path} (or its manifest) already exists: another backup of this database finished "
                         f"in the same second, and a backup is never overwritten. {partial} was left as it is; "
                         "rerun in a second.")
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
    restrict(partial, fmt)

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
    # The manifest is written (and synced) before the dump takes its complete name, so a complete-named dump
    # always has its manifest: a full disk, or any other failure here, leaves the dump under its .partial name.
    manifest_partial = Path(f"{manifest_path}.partial")
    try:
        write_new(manifest_partial, json.dumps(manifest, indent=4, sort_keys=True, separators=(",", ": ")) + "\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            manifest_partial.unlink()
        module.fail_json(
            msg=f"could not write the manifest of {partial} in {path.parent}: {exc.strerror or exc}. The dump was "
            "verified but stays under its .partial name (no backup pattern matches it) and no manifest was left: "
            f"free space in {path.parent} (or fix its permissions), remove the .partial file and rerun.",
        )
    os.rename(manifest_partial, manifest_path)
    os.rename(partial, path)
    fsync_dir(path.parent)
    pattern = re.compile(p["list_pattern"])
    # Retention may delete only this database's dumps: names are sanitised (préstamos and pr_stamos share
    # a prefix), so a sibling counts only when its manifest names the same database.
    siblings = sorted(
        name for name in os.listdir(path.parent)
        if pattern.search(name) and manifest_database(path.parent / name) == manifest.get("database")
    )
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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "default": "seal", "choices": ["seal", "verify"]},
            "partial": {"type": "path"},
            "path": {"type": "path"},
            "format": {"type": "str", "choices": ["custom", "directory"]},
            "manifest": {"type": "dict"},
            "directory": {"type": "path"},
            "expect": {"type": "dict"},
            "source_database": {"type": "str", "default": ""},
            "pg_restore": {"type": "str", "default": "pg_restore"},
            "pg_dump": {"type": "str", "default": "pg_dump"},
            "list_pattern": {"type": "str", "default": "^$"},
            "row_counts_of": {"type": "list", "elements": "str", "default": []},
        },
        required_if=[("mode", "seal", ("partial", "path", "format", "manifest")), ("mode", "verify", ("expect",))],
        supports_check_mode=False,
    )
    (verify_mode if module.params["mode"] == "verify" else seal_mode)(module)


if __name__ == "__main__":
    main()
