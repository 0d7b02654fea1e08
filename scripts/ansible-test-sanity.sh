#!/usr/bin/env bash
# ansible-test sanity on the project's collection, offline from Galaxy: ansible-test bootstraps pip into
# each test's virtualenv by downloading get-pip.py from ci-files.testing.ansible.com, which ops networks
# (and this project's CI) may not reach. Its cache is seeded with a stand-in that runs the interpreter's own
# ensurepip instead; the test requirements themselves still come from PyPI, like the project's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv/bin
pip_version=$("$venv/python" - <<'PY'
import pathlib, re
import ansible_test
source = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
PY
)
cache=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [ ! -f "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  cat > "$cache" <<'PY'
"""Stand-in for ansible-test's pip bootstrap script (offline): the interpreter's own ensurepip."""
import ensurepip
import sys

sys.exit(ensurepip._main(["--upgrade", "--default-pip"]) or 0)
PY
fi
python_version=$("$venv/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cd "$root/python/ansible_collections/prestamos/capital"
# PATH: ansible-test finds ansible-doc and the interpreter in the project's virtualenv.
PATH=$venv:$PATH exec "$venv/ansible-test" sanity --python "$python_version" \
  --test validate-modules --test ansible-doc --test yamllint --test pep8 --test pylint --test import \
  --test compile "$@"
