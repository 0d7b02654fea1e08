#!/usr/bin/env bash
# The guide's executor, kept as a thin wrapper over the capital-migrate CLI so
# operators who know the guide find it where it says. Unlike the first
# scripts it stops at the first error, backs up and verifies before reporting
# success, rolls back by itself on failure, and never prints the connection
# string. Arguments go to `capital-migrate migrate` (see docs/cli.md), e.g.
#   ./execute_migration.sh --env staging
#   DATABASE_URL=... ./execute_migration.sh --env local
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
make -s -C "$here" setup >&2
exec "$here/.venv/bin/capital-migrate" migrate "$@"
