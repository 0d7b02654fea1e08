"""Backup: real pg_dump through the real playbook, verified, 0600 in 0700, rotated, never overwritten."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capital_migrate.pgtmp import Database
from migration_helpers import run_sql
from playbook_support import ANSIBLE_PLAYBOOK, ROOT, PlaybookRun, playbook_env, run_playbook

PLAYBOOK = "playbooks/backup.yml"
BASELINE = ROOT / "files" / "sql" / "baseline" / "baseline_schema.sql"
LEGACY = ("Junta", "Accion", "Multa", "Prestamo", "PagoPrestamo", "User")
SEED = """
INSERT INTO "User" (id, full_name) SELECT 'u' || g, 'Member ' || g FROM generate_series(1, 20) g;
INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id)
  SELECT 'j' || g, 'Junta ' || g, TIMESTAMP '2024-01-01', 'u' || g FROM generate_series(1, 4) g;
INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
  SELECT 'a' || g, 'COMPRA', 0.1 + 0.2, TIMESTAMP '2024-01-02', 'j' || (1 + g % 4), 'u' || (1 + g % 20)
    FROM generate_series(1, 40) g;
INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
  SELECT 'p' || g, 10, 'APPROVED', TIMESTAMP '2024-03-01', TIMESTAMP '2024-03-01', 'j' || (1 + g % 4), 'u' || g
    FROM generate_series(1, 7) g;
INSERT INTO "PagoPrestamo" (id, amount, date, prestamo_id)
  SELECT 'g' || g, 1.5, TIMESTAMP '2024-04-01', 'p' || (1 + g % 7) FROM generate_series(1, 9) g;
INSERT INTO "Multa" (id, amount, description, status, created_at, junta_id, member_id)
  VALUES ('m1', 5, 'late', 'PAID', TIMESTAMP '2024-02-01', 'j1', 'u1');
"""
NAME = re.compile(r"^(?P<env>[a-z]+)-(?P<db>.+)-(?P<stamp>\d{8}T\d{6}Z)\.dump$")


@pytest.fixture
def seeded_db(pg_db: Database) -> Database:
    run_sql(pg_db, BASELINE.read_text(encoding="utf-8"))
    run_sql(pg_db, SEED)
    return pg_db


def backup(db: Database, backup_dir: Path, report_dir: Path, args: list[str] | None = None,
           **extravars: Any) -> PlaybookRun:
    return run_playbook(PLAYBOOK, playbook_env(db.env),
                        {"capital_backup_dir": str(backup_dir), "capital_report_dir": str(report_dir), **extravars},
                        args=args or [])


def dumps(backup_dir: Path) -> list[Path]:
    return sorted(p for p in backup_dir.iterdir() if p.name.endswith(".dump"))


def test_backup_is_private_verified_and_described_by_its_manifest(seeded_db: Database, tmp_path: Path) -> None:
    backup_dir, report_dir = tmp_path / "deep" / "backups", tmp_path / "reports"

    run = backup(seeded_db, backup_dir, report_dir, args=["-vvv"])

    assert run.rc == 0, run.output
    assert seeded_db.env["PGPASSWORD"] not in run.output
    for directory in (backup_dir, report_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [dump] = dumps(backup_dir)
    match = NAME.match(dump.name)
    assert match and match["env"] == "local" and match["db"] == seeded_db.name
    manifest_path = dump.with_name(dump.name + ".manifest.json")
    for path in (dump, manifest_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert manifest["size"] == dump.stat().st_size
    assert manifest["database"] == seeded_db.name and manifest["capital_env"] == "local"
    assert manifest["server_version"] == run_sql(seeded_db, "SHOW server_version")[0][0]
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL)")
    assert manifest["row_counts"] == {t: run_sql(seeded_db, f'SELECT count(*) FROM "{t}"')[0][0] for t in LEGACY}
    assert seeded_db.env["PGPASSWORD"] not in manifest_path.read_text(encoding="utf-8")

    toc = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=False)
    assert toc.returncode == 0 and re.search(r'TABLE DATA public "?PagoPrestamo"? ', toc.stdout), toc.stdout

    report = run.report("backup")
    assert report["file"] == str(dump) and report["sha256"] == manifest["sha256"]
    assert report["manifest"] == str(manifest_path)


def test_each_run_makes_a_new_file_and_retention_keeps_the_newest(seeded_db: Database, tmp_path: Path) -> None:
    backup_dir, report_dir = tmp_path / "backups", tmp_path / "reports"
    backup_dir.mkdir()
    backup_dir.chmod(0o755)  # made by hand by someone else: used as it is, never chmodded (issue 17)
    # Dumps of another environment and of another database share the directory and are left alone.
    foreign = [backup_dir / "staging-other-20200101T000000Z.dump",
               backup_dir / f"local-{seeded_db.name}x-20200101T000000Z.dump"]
    for path in foreign:
        path.write_bytes(b"not ours")

    made: list[str] = []
    for _ in range(3):
        run = backup(seeded_db, backup_dir, report_dir, capital_backup_keep=2)
        assert run.rc == 0, run.output
        made.append(run.report("backup")["file"])
    assert len(set(made)) == 3
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o755

    ours = [p for p in dumps(backup_dir) if p not in foreign]
    assert [str(p) for p in ours] == made[1:]
    assert all(p.with_name(p.name + ".manifest.json").exists() for p in ours)
    assert not Path(made[0] + ".manifest.json").exists()
    assert all(p.exists() for p in foreign)


def test_retention_never_deletes_the_dump_of_this_run(seeded_db: Database, tmp_path: Path) -> None:
    backup_dir, report_dir = tmp_path / "backups", tmp_path / "reports"
    backup_dir.mkdir(mode=0o700)
    future = backup_dir / f"local-{seeded_db.name}-29991231T235959Z.dump"  # sorts newer than this run's dump
    future.write_bytes(b"from a clock in the future")

    run = backup(seeded_db, backup_dir, report_dir, capital_backup_keep=1)

    assert run.rc == 0, run.output
    current = Path(run.report("backup")["file"])
    assert current.exists() and future.exists()
    assert run.report("backup")["retention_deleted"] == []


def test_restore_test_restores_into_a_scratch_database_and_drops_it(seeded_db: Database, tmp_path: Path) -> None:
    run = backup(seeded_db, tmp_path / "backups", tmp_path / "reports", capital_backup_restore_test=True)

    assert run.rc == 0, run.output
    restore = run.report("backup")["restore_test"]
    assert restore["row_counts_match"] is True
    assert run_sql(seeded_db, "SELECT count(*) FROM pg_database WHERE datname LIKE 'capital_restore_test%'")[0][0] == 0


def test_directory_format_dumps_in_parallel_with_a_reproducible_sha256(seeded_db: Database, tmp_path: Path) -> None:
    backup_dir = tmp_path / "backups"
    run = backup(seeded_db, backup_dir, tmp_path / "reports", capital_backup_format="directory",
                 capital_backup_jobs=2, capital_backup_restore_test=True)

    assert run.rc == 0, run.output
    [dump] = dumps(backup_dir)
    assert dump.is_dir() and stat.S_IMODE(dump.stat().st_mode) == 0o700
    files = sorted(p for p in dump.iterdir())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    manifest = json.loads(dump.with_name(dump.name + ".manifest.json").read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(lines.encode()).hexdigest() == run.report("backup")["sha256"]


def compression(dump: Path) -> str:
    """The compression pg_restore --list reads from the dump's header ("1"/"0" from pg_dump 15, "gzip"/"none" later)."""
    toc = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True)
    found = re.search(r"^;\s+Compression: (\S+)", toc.stdout, re.MULTILINE)
    assert found, toc.stdout
    return found[1]


def test_the_dump_is_compressed_at_level_1_unless_told_otherwise(seeded_db: Database, tmp_path: Path) -> None:
    default = backup(seeded_db, tmp_path / "default", tmp_path / "reports")
    plain = backup(seeded_db, tmp_path / "uncompressed", tmp_path / "reports", capital_backup_compress=0)

    assert default.rc == 0 and plain.rc == 0, default.output + plain.output
    assert compression(dumps(tmp_path / "default")[0]) in {"1", "gzip"}
    assert compression(dumps(tmp_path / "uncompressed")[0]) in {"0", "none"}


def test_a_compression_level_out_of_range_is_refused_before_anything_is_written(seeded_db: Database,
                                                                                 tmp_path: Path) -> None:
    run = backup(seeded_db, tmp_path / "backups", tmp_path / "reports", capital_backup_compress=10)
    assert run.rc != 0
    assert "capital_backup_compress" in run.output and "10" in run.output
    assert not (tmp_path / "backups").exists()


def test_invalid_format_is_refused_before_anything_is_written(seeded_db: Database, tmp_path: Path) -> None:
    run = backup(seeded_db, tmp_path / "backups", tmp_path / "reports", capital_backup_format="plain")
    assert run.rc != 0
    assert "capital_backup_format" in run.output and "plain" in run.output
    assert not (tmp_path / "backups").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk for pg_dump (needs root and mount permission)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,mode=0700", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_full_disk_fails_the_dump_and_removes_the_partial_file(seeded_db: Database, tiny_disk: Path,
                                                                  tmp_path: Path) -> None:
    # About 4 MB of incompressible text: far more than the 1 MiB filesystem holds, even compressed.
    run_sql(seeded_db, 'INSERT INTO "User" (id, email) SELECT \'big\' || g, md5(g::text) || md5((g * 7)::text) '
                        "FROM generate_series(1, 60000) g")
    backup_dir = tiny_disk / "backups"

    run = backup(seeded_db, backup_dir, tmp_path / "reports")

    assert run.rc != 0
    assert "The dump failed" in run.output and "No space left on device" in run.output
    assert "partial file" in run.output and "was removed" in run.output
    assert dumps(backup_dir) == []
    assert seeded_db.env["PGPASSWORD"] not in run.output


def test_check_mode_writes_nothing(seeded_db: Database, tmp_path: Path) -> None:
    run = backup(seeded_db, tmp_path / "backups", tmp_path / "reports", args=["--check"])
    assert run.rc == 0, run.output
    assert "would dump to" in run.output
    assert not (tmp_path / "backups").exists()


def test_a_unique_password_never_reaches_the_output(seeded_db: Database, tmp_path: Path) -> None:
    """A role with a distinctive password runs the backup at -vvv; the password shows nowhere. Its ':' and
    '\\' must be escaped in the pgpass file pg_dump reads, or the dump cannot log in."""
    name, password = f"capital_bk_{uuid.uuid4().hex[:8]}", f"Sek:r3t\\-{uuid.uuid4().hex}"
    run_sql(seeded_db, f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'")
    try:
        env = {**seeded_db.env, "PGUSER": name, "PGPASSWORD": password, "TMPDIR": str(tmp_path / "t")}
        (tmp_path / "t").mkdir()
        run = run_playbook(PLAYBOOK, playbook_env(env),
                           {"capital_backup_dir": str(tmp_path / "b"), "capital_report_dir": str(tmp_path / "r")},
                           args=["-vvv"])
        assert run.rc == 0, run.output
        assert password not in run.output and password.replace("\\", "\\\\") not in run.output
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
        assert list((tmp_path / "t").iterdir()) == []  # the (escaped) pgpass file is gone too
    finally:
        run_sql(seeded_db, f"DROP ROLE {name}")


def test_the_identity_is_read_by_a_plain_role_and_null_where_pg_control_system_is_revoked(
        seeded_db: Database, tmp_path: Path) -> None:
    """PostgreSQL 15 lets PUBLIC execute pg_control_system(), so a role that is no superuser records the
    cluster's system identifier; where an administrator revoked it (pg_monitor does not give it back) the
    backup still succeeds and the manifest says null, not a guess."""
    [(sysid,)] = run_sql(seeded_db, "SELECT system_identifier::text FROM pg_control_system()")
    name, password = f"capital_ro_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    run_sql(seeded_db, f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_data, pg_monitor")
    env = {**seeded_db.env, "PGUSER": name, "PGPASSWORD": password}
    try:
        manifests = []
        for revoke in (False, True):
            if revoke:
                run_sql(seeded_db, "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
            backup_dir = tmp_path / f"b{revoke}"
            run = run_playbook(PLAYBOOK, playbook_env(env),
                               {"capital_backup_dir": str(backup_dir), "capital_report_dir": str(tmp_path / "r")})
            assert run.rc == 0, run.output
            [dump] = dumps(backup_dir)
            manifests.append(json.loads(Path(f"{dump}.manifest.json").read_text(encoding="utf-8")))
    finally:
        run_sql(seeded_db, "GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
        run_sql(seeded_db, f"DROP ROLE {name}")
    assert [m["system_identifier"] for m in manifests] == [sysid, None]
    assert all(m["database"] == seeded_db.name and m["server_version_num"] >= 150000 for m in manifests)


# -- capital_backup_seal, run alone (ansible localhost -m ...) on dumps damaged by hand --------------------
def seal(partial: Path, path: Path, env: dict[str, str], **more: Any) -> subprocess.CompletedProcess[str]:
    args = {"partial": str(partial), "path": str(path), "format": "custom",
            "manifest": {"database": "x", "capital_env": "local"}, **more}
    return subprocess.run([str(Path(ANSIBLE_PLAYBOOK).with_name("ansible")), "localhost", "-i",
                           str(ROOT / "inventories" / "local"), "-m", "prestamos.capital.capital_backup_seal",
                           "-a", json.dumps(args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def fresh_dump(seeded_db: Database, tmp_path: Path) -> bytes:
    """A real custom-format dump of the seeded database, with enough rows for several data blocks."""
    run_sql(seeded_db, 'INSERT INTO "User" (id, email) SELECT \'many\' || g, md5(g::text) '
                       "FROM generate_series(1, 20000) g")
    out = tmp_path / "whole.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={out}"], env=playbook_env(seeded_db.env), check=True)
    return out.read_bytes()


@pytest.mark.parametrize("damage", ["cut at 60 %", "cut at 99 %", "one byte flipped mid-file"])
def test_seal_refuses_a_damaged_dump_and_keeps_it_partial(seeded_db: Database, fresh_dump: bytes,
                                                          tmp_path: Path, damage: str) -> None:
    # pg_restore --list alone passes all three (the table of contents is intact); reading every entry does not.
    data = bytearray(fresh_dump)
    if damage.startswith("cut"):
        data = data[: len(data) * int(damage.split()[2]) // 100]
    else:
        data[len(data) // 2] ^= 0xFF
    partial, path = tmp_path / "local-x-20260101T000000Z.dump.partial", tmp_path / "local-x-20260101T000000Z.dump"
    partial.write_bytes(bytes(data))

    done = seal(partial, path, playbook_env(seeded_db.env))

    assert done.returncode != 0
    assert "could not read every entry" in done.stdout and ".partial name" in done.stdout
    assert partial.read_bytes() == bytes(data) and not path.exists()
    assert not Path(f"{path}.manifest.json").exists()


def test_seal_never_overwrites_an_existing_dump(seeded_db: Database, fresh_dump: bytes, tmp_path: Path) -> None:
    partial, path = tmp_path / "local-x-20260101T000000Z.dump.partial", tmp_path / "local-x-20260101T000000Z.dump"
    partial.write_bytes(fresh_dump)
    path.write_bytes(b"an earlier backup")

    done = seal(partial, path, playbook_env(seeded_db.env))

    assert done.returncode != 0 and "never overwritten" in done.stdout
    assert path.read_bytes() == b"an earlier backup" and partial.read_bytes() == fresh_dump


def test_seal_moves_a_whole_dump_into_place_with_its_manifest(seeded_db: Database, fresh_dump: bytes,
                                                              tmp_path: Path) -> None:
    partial, path = tmp_path / "local-x-20260101T000000Z.dump.partial", tmp_path / "local-x-20260101T000000Z.dump"
    partial.write_bytes(fresh_dump)
    partial.chmod(0o644)  # a leftover's mode: the sealed dump is the owner's alone anyway
    at_dump = {t: run_sql(seeded_db, f'SELECT count(*) FROM "{t}"')[0][0] for t in LEGACY}
    # The application writes after pg_dump's snapshot: the manifest counts what the dump holds, not this.
    run_sql(seeded_db, """INSERT INTO "User" (id, email) SELECT 'later' || g, 'later' || g
                          FROM generate_series(1, 7) g""")

    done = seal(partial, path, playbook_env(seeded_db.env), row_counts_of=list(LEGACY))

    assert done.returncode == 0, done.stdout
    assert not partial.exists() and path.read_bytes() == fresh_dump
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(fresh_dump).hexdigest() and manifest["size"] == len(fresh_dump)
    assert manifest["database"] == "x" and manifest["toc_entries"] > 0
    assert manifest["row_counts"] == at_dump and at_dump["User"] > 20000
    assert manifest["server_version"] == run_sql(seeded_db, "SHOW server_version")[0][0]


def test_seal_refuses_a_dump_without_the_tables_it_must_count(seeded_db: Database, fresh_dump: bytes,
                                                              tmp_path: Path) -> None:
    partial, path = tmp_path / "local-x-20260101T000000Z.dump.partial", tmp_path / "local-x-20260101T000000Z.dump"
    partial.write_bytes(fresh_dump)

    done = seal(partial, path, playbook_env(seeded_db.env), row_counts_of=["Junta", "NoSuchTable"])

    assert done.returncode != 0 and "holds no data for NoSuchTable" in done.stdout
    assert partial.read_bytes() == fresh_dump and not path.exists()
