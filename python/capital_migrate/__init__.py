"""capital-migrate: run the prestamos capital-tracking migration safely through Ansible.

The project's collection sits beside this package (python/ansible_collections/prestamos/capital). Its
module_utils and plugin_utils are plain Python shared with the roles and the callback: the one URL parser
and pgpass writer, the input rules, the migration state rules, the report renderer. python/ goes on the
path once, here, last (shadowing nothing), so every module of the CLI imports them by their collection
name, as Ansible does - never by file path.
"""

import sys
from pathlib import Path

__version__ = "0.1.0"

_COLLECTIONS_PARENT = str(Path(__file__).resolve().parents[1])
if _COLLECTIONS_PARENT not in sys.path:
    sys.path.append(_COLLECTIONS_PARENT)
