"""A dump on disk, read whole and hashed: plain, typed Python for the capital_backup_seal module.

In module_utils because reading a dump means streaming pg_restore's whole output (every data block,
decompressed) through this process to count each table's rows: AnsibleModule.run_command would hold all
of it in memory, so this runs pg_restore with subprocess and reads it line by line.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

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
    """(sha256, size, sha256_method) of a custom-format file or a directory dump. Sealing and verifying both
    call this, so the two can never disagree on how a format is hashed."""
    if fmt == "custom":
        return file_sha256(path), path.stat().st_size, "file"
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{file_sha256(p)}  {name}\n" for name, p in files)
    size = sum(p.stat().st_size for _name, p in files)
    return hashlib.sha256(lines.encode()).hexdigest(), size, "sha256 of sorted sha256sum lines of the directory files"
