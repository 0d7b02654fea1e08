-- role: new tables and functions need CREATE on the schema and USAGE on plpgsql.
SELECT current_user AS login_role,
       r.rolsuper AS superuser,
       has_schema_privilege('public', 'CREATE') AS schema_create,
       coalesce((SELECT has_language_privilege(l.oid, 'USAGE')
                   FROM pg_language l WHERE l.lanname = 'plpgsql'), false) AS plpgsql_usage
  FROM pg_roles r
 WHERE r.rolname = current_user;
