-- table_locks: the guide's check (pg_stat_activity, state = 'active', pid <> pg_backend_pid())
-- narrowed to what matters for the migration: sessions holding or waiting for locks on the legacy
-- tables. The query text of other sessions is left out on purpose: it can hold anything, secrets included.
SELECT l.pid, c.relname AS relation, l.mode, l.granted, a.usename AS user_name,
       a.application_name, a.state,
       to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS query_start,
       floor(extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.query_start)))::bigint AS age_seconds
  FROM pg_locks l
  JOIN pg_class c ON c.oid = l.relation
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND c.relnamespace = 'public'::regnamespace
   AND c.relname = ANY (string_to_array(%(tables)s, ','))
   AND l.pid <> pg_backend_pid()
 ORDER BY l.granted, age_seconds DESC NULLS LAST, l.pid, c.relname;
