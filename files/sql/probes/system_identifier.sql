-- system_identifier: the cluster's identifier, fixed at initdb, so two clusters never share one. Executable by
-- PUBLIC by default; run as an optional probe, since an administrator may revoke it.
SELECT system_identifier::text AS system_identifier
  FROM pg_catalog.pg_control_system();
