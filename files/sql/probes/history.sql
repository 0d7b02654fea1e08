-- history: the last five runs of the migration (capital_migration_history exists only once a run got that
-- far; the objects probe says whether it does).
SELECT h.version, h.sql_sha256, h.outcome,
       to_char(h.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS finished_at
  FROM capital_migration_history h
 ORDER BY h.id DESC
 LIMIT 5;
