"""The backup stage with a hostile or unlucky backup directory (issue 17, items 3, 6 and 10): it never changes a
directory it did not create, a complete-named dump always has its manifest, and retention deletes only this
database's dumps."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from capital_migrate.pgtmp import Cluster, Database, temporary_database
from migration_helpers import run_sql
from playbook_support import ROOT, playbook_env, run_playbook
from system_support import tmpfs
from test_backup import BASELINE, SEED, backup, dumps, seeded_db  # noqa: F401 - seeded_db is a fixture


def test_a_shared_directory_behind_a_symlink_is_refused_and_left_as_it_was(
    seeded_db: Database, tmp_path: Path  # noqa: F811
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = tmp_path / "backups"
    link.symlink_to(shared)

    run = backup(seeded_db, link, tmp_path / "reports")

    assert run.rc != 0
    assert "is a symbolic link" in run.output and str(link) in run.output
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_a_group_or_world_writable_backup_directory_is_refused_unchanged(
    seeded_db: Database, tmp_path: Path, mode: int  # noqa: F811
) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    directory.chmod(mode)

    run = backup(seeded_db, directory, tmp_path / "reports")

    assert run.rc != 0
    assert "writable by its group or by others" in run.output
    assert stat.S_IMODE(directory.stat().st_mode) == mode
    assert list(directory.iterdir()) == []


def test_a_full_disk_while_writing_the_manifest_leaves_no_complete_named_dump(
    seeded_db: Database, tmp_path: Path  # noqa: F811
) -> None:
    """The seal module itself, on a real tmpfs filled after pg_dump wrote the dump (we are root)."""
    with tmpfs(tmp_path / "full", "2m") as mount:
        partial = mount / "local-db-20260101T000000Z.dump.1.partial"
        subprocess.run(["pg_dump", "-Fc", "--no-password", "-f", str(partial)], env=seeded_db.env, check=True)
        stats = os.statvfs(mount)
        with (mount / "ballast").open("wb") as fh:  # another process fills the disk
            os.posix_fallocate(fh.fileno(), 0, stats.f_bavail * stats.f_frsize)
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-m", "prestamos.capital.capital_backup_seal",
             "-a", json.dumps({"partial": str(partial), "path": str(mount / "local-db-20260101T000000Z.dump"),
                               "format": "custom", "manifest": {"database": "db"}, "row_counts_of": ["Junta"]}),
             "-e", "ansible_python_interpreter=" + str(ROOT / ".venv" / "bin" / "python")],
            cwd=ROOT, env=playbook_env(dict(os.environ)), capture_output=True, text=True, check=False,
        )
        names = sorted(p.name for p in mount.iterdir())
    assert done.returncode != 0, done.stdout
    assert "could not write the manifest" in done.stdout and "No space left on device" in done.stdout, done.stdout
    assert names == ["ballast", partial.name]  # the dump stays .partial, and no manifest (partial or not)


def test_retention_deletes_only_this_databases_dumps_when_sanitised_names_collide(
    seeded_db: Database, tmp_path: Path  # noqa: F811
) -> None:
    """préstamos and pr_stamos share the sanitised prefix pr_stamos: a dump counts for retention only when its
    manifest names this database."""
    backup_dir = tmp_path / "backups"
    first = backup(seeded_db, backup_dir, tmp_path / "reports")
    assert first.rc == 0, first.output
    [ours] = dumps(backup_dir)
    other = ours.with_name(ours.name.replace("2026", "2025", 1))
    shutil.copy(ours, other)
    manifest = json.loads(Path(f"{ours}.manifest.json").read_text())
    Path(f"{other}.manifest.json").write_text(json.dumps({**manifest, "database": "another database"}))

    run = backup(seeded_db, backup_dir, tmp_path / "reports", capital_backup_keep=1)

    assert run.rc == 0, run.output
    assert other.exists(), "retention deleted another database's dump"
    assert not ours.exists()  # our older dump went, as retention should


def test_a_database_whose_name_holds_an_equals_sign_and_a_quote_is_restored_into_itself(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    """pg_restore reads a --dbname holding '=' as a connection string: the restore passes a quoted conninfo."""
    with temporary_database(pg_cluster, prefix="cap=ital o'db") as db:
        run_sql(db, BASELINE.read_text(encoding="utf-8"))
        run_sql(db, SEED)
        env = playbook_env(db.env)
        dirs = {"capital_backup_dir": str(tmp_path / "b"), "capital_report_dir": str(tmp_path / "r")}
        assert run_playbook("playbooks/backup.yml", env, dirs).rc == 0
        run_sql(db, 'DELETE FROM "PagoPrestamo"')

        restored = run_playbook("playbooks/rollback.yml", env, {**dirs, "capital_rollback_mode": "restore"})

        assert restored.rc == 0, restored.output[-3000:]
        assert run_sql(db, 'SELECT count(*) FROM "PagoPrestamo"') == [(9,)]


def test_two_backups_in_the_same_second_never_share_a_partial_and_the_second_is_refused_by_name(
    seeded_db: Database, tmp_path: Path  # noqa: F811
) -> None:
    """The same second made deterministic: both runs are given the same time stamp (extra vars outrank the
    role's set_fact). Each writes its own .partial; the second may not take the first's name."""
    backup_dir = tmp_path / "backups"
    same = {"__capital_backup_stamp": "20260101T000000Z"}
    first = backup(seeded_db, backup_dir, tmp_path / "reports", **same)
    assert first.rc == 0, first.output
    [dump] = dumps(backup_dir)
    sealed = dump.read_bytes()

    second = backup(seeded_db, backup_dir, tmp_path / "reports", **same)

    assert second.rc != 0
    assert "another backup of this database finished in the same second" in second.output
    assert dumps(backup_dir) == [dump] and dump.read_bytes() == sealed
    partials = [p.name for p in backup_dir.iterdir() if p.name.endswith(".partial")]
    assert len(partials) == 1 and partials[0] != f"{dump.name}.partial"  # the second's own, left for a look
