-- old_xacts: transactions older than capital_max_xact_age.
SELECT a.pid, a.usename AS user_name, a.application_name, a.state, a.wait_event_type,
       to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS xact_start,
       to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS query_start,
       floor(extract(epoch FROM clock_timestamp() - a.xact_start))::bigint AS age_seconds
  FROM pg_stat_activity a
 WHERE a.pid <> pg_backend_pid()
   AND a.datname = current_database()
   AND a.xact_start IS NOT NULL
   AND clock_timestamp() - a.xact_start > make_interval(secs => %(max_age)s)
 ORDER BY a.xact_start;
