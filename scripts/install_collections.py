#!/usr/bin/env python3
"""Install the project's third-party collections without Ansible Galaxy.

Galaxy is unreachable on many ops networks. The PyPI ``ansible`` wheel bundles
the collections we need, so we download that one wheel with pip, check its
sha256 against the pin below, and unpack only the collections named in
``collections/requirements.yml`` (what the playbooks need; the execution environment
installs the same list) and ``collections/requirements-awx.yml`` (awx.awx, to load and
validate the AWX configuration as code; not in the execution environment) into the
git-ignored ``collections/`` directory. A stamp file makes a rerun with nothing to do
return at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ANSIBLE_WHEEL = "ansible-12.3.0-py3-none-any.whl"
ANSIBLE_PIN = "ansible==12.3.0"
ANSIBLE_SHA256 = "cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414"

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = (ROOT / "collections" / "requirements.yml", ROOT / "collections" / "requirements-awx.yml")
DEST = ROOT / "collections" / "ansible_collections"
CACHE = ROOT / ".cache" / "wheels"
STAMP = ROOT / "collections" / ".installed"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wanted() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in REQUIREMENTS:
        data = yaml.safe_load(path.read_text())
        for item in data["collections"]:
            name, version = item["name"], str(item["version"])
            if found.setdefault(name, version) != version:
                sys.exit(f"error: {name} is pinned to both {found[name]} and {version} "
                         "in collections/requirements*.yml")
    return found


def fetch_wheel() -> Path:
    wheel = CACHE / ANSIBLE_WHEEL
    if not wheel.exists() or sha256(wheel) != ANSIBLE_SHA256:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary", ":all:", "--dest", str(CACHE), ANSIBLE_PIN],
            check=True,
        )
    actual = sha256(wheel)
    if actual != ANSIBLE_SHA256:
        wheel.unlink()
        sys.exit(f"error: {ANSIBLE_WHEEL} has sha256 {actual}, expected {ANSIBLE_SHA256}; "
                 "the download is corrupt or the wheel was replaced: refusing to install it")
    return wheel


def main() -> int:
    collections = wanted()
    stamp = json.dumps({"wheel_sha256": ANSIBLE_SHA256, "collections": collections}, sort_keys=True)
    if STAMP.exists() and STAMP.read_text() == stamp:
        STAMP.touch()  # up to date: newer than its inputs again, so make does not ask next time
        return 0
    wheel = fetch_wheel()
    with zipfile.ZipFile(wheel) as archive:
        for name, version in collections.items():
            namespace, collection = name.split(".")
            prefix = f"ansible_collections/{namespace}/{collection}/"
            manifest = json.loads(archive.read(prefix + "MANIFEST.json"))
            found = manifest["collection_info"]["version"]
            if found != version:
                sys.exit(f"error: {ANSIBLE_WHEEL} bundles {name} {found}, collections/requirements*.yml ask "
                         f"for {version}: change one of them so they agree")
            target = DEST / namespace / collection
            shutil.rmtree(target, ignore_errors=True)
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    archive.extract(member, ROOT / "collections")
            print(f"installed {name} {version} from {ANSIBLE_WHEEL}")
    STAMP.write_text(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
