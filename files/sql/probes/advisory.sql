-- advisory: another run holding the migration lock, looked up in pg_locks, never taken:
-- pg_try_advisory_lock(bigint) files a key as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
SELECT l.pid, l.granted, a.usename AS user_name, a.application_name,
       coalesce(host(a.client_addr), 'local') AS client,
       to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS since
  FROM pg_locks l
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = ((hashtext(%(name)s)::bigint >> 32) & 4294967295)::oid
   AND l.objid = (hashtext(%(name)s)::bigint & 4294967295)::oid
   AND l.objsubid = 1
   AND l.granted;
