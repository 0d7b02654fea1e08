-- The guide's "Stop All Activity", kept to this database (all a rollback needs): cancel every active query
-- of another session, never terminate one. Run only with capital_rollback_cancel_queries: true.
SELECT pid, pg_cancel_backend(pid) AS cancelled
FROM pg_stat_activity
WHERE state = 'active'
AND pid <> pg_backend_pid()
AND datname = current_database();
