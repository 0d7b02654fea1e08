-- db_size: the dump estimate of the backup space check, and the server's version (connection.yml).
SELECT pg_database_size(current_database()) AS bytes,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int / 10000 AS server_major;
