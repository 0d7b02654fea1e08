-- identity: which database this is, for the backup manifest and for a restore to refuse a dump of another.
-- The cluster's system identifier is the probe system_identifier, run as optional: an administrator may
-- revoke pg_control_system() (pg_monitor does not grant it back), and the restore then compares the database
-- name only and says so (roles/rollback/README.md).
SELECT current_database() AS database,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num;
