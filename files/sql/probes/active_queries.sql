-- active_queries: what the opt-in "stop all activity" would cancel (files/sql/rollback/cancel_active_queries.sql),
-- listed without cancelling anything, for a dry run. The query text is left out: it can hold anything.
SELECT pid, usename AS user_name, application_name, state
FROM pg_stat_activity
WHERE state = 'active'
AND pid <> pg_backend_pid()
AND datname = current_database();
