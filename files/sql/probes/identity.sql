-- identity: which database this is, for the backup manifest and for a restore to refuse a dump of another.
-- pg_control_system() is executable by PUBLIC by default (PostgreSQL 15 tested), but an administrator may
-- revoke it (pg_monitor does not grant it back). A direct call would then fail the whole query at plan time,
-- so it runs through query_to_xml only when has_function_privilege() says it may: a null system_identifier,
-- and the restore then compares the database name only and says so (roles/rollback/README.md).
SELECT current_database() AS database,
       CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
            THEN substring(query_to_xml('SELECT system_identifier AS s FROM pg_catalog.pg_control_system()',
                                        false, true, '')::text FROM '<s>([0-9]+)</s>')
       END AS system_identifier,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num;
