"""Fewer sessions while the application is live (plain, typed Python for the prestamos.capital modules).

A second backfill, probe or check session makes a run faster where a core is free, and takes that core from the
application where none is: side by side on two cores under the footprint's load, the whole run's p99 went from
3.56x to 5.08x the baseline's with two sessions per stage (BENCHMARKS.md, issue 20, the footprint before and
after). So a module given ``connections_while_live`` looks once, before it opens a second session, for the
application on this database: another client session (not this run's: application_name ``capital*``) that is
in a statement or a transaction now, or was within the last LIVE_WINDOW_S seconds (a session the run's role may
not see the state of, another role's without pg_read_all_stats, counts as at work). If there is one, the module
uses at most ``connections_while_live`` sessions; in a quiet change window it uses ``connections``.
"""

from __future__ import annotations

from typing import Any

LIVE_WINDOW_S = 2

# Idle sessions of a connection pool are not the application at work; a session that ran a statement within the
# window, or is in one or in a transaction, is. A role without pg_read_all_stats sees another role's sessions of
# this database without their type and state (NULL): each is taken for the application at work.
APPLICATION_SESSIONS_SQL = f"""
SELECT count(*)::int FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND coalesce(application_name, '') NOT LIKE 'capital%'
   AND (backend_type IS NULL
        OR backend_type = 'client backend'
           AND (state IS DISTINCT FROM 'idle' OR state_change > clock_timestamp() - interval '{LIVE_WINDOW_S} seconds'))
"""


def application_sessions(conn: Any) -> int:
    """How many other client sessions of this database are at work now (see APPLICATION_SESSIONS_SQL). Runs
    in the connection's transaction, if one is open; the caller ends it (or keeps it: a snapshot)."""
    with conn.cursor() as cur:
        cur.execute(APPLICATION_SESSIONS_SQL)
        row = cur.fetchone()
    return int(row[0]) if row else 0


def sessions(conn: Any, connections: int, while_live: int) -> tuple[int, int | None]:
    """(sessions to use, application sessions seen or None when not looked): ``connections``, or at most
    ``while_live`` of them when the application is at work on this database. ``while_live`` 0 or not below
    ``connections`` does not look."""
    if while_live < 1 or while_live >= connections:
        return connections, None
    seen = application_sessions(conn)
    return (while_live if seen else connections), seen
