-- tables: ALTER TABLE and CREATE TRIGGER need ownership of the table (or membership in the owning role).
SELECT t.name,
       c.oid IS NOT NULL AS present,
       coalesce(pg_get_userbyid(c.relowner), '') AS owner,
       coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false) AS may_alter,
       coalesce(has_table_privilege(c.oid, 'TRIGGER'), false) AS may_trigger,
       coalesce(has_table_privilege(c.oid, 'SELECT'), false) AS may_select
  FROM unnest(string_to_array(%(tables)s, ',')) WITH ORDINALITY AS t(name, ord)
  LEFT JOIN pg_class c
         ON c.relname = t.name
        AND c.relnamespace = 'public'::regnamespace
        AND c.relkind IN ('r', 'p')
 ORDER BY t.ord;
