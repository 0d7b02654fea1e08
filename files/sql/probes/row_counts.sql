-- row_counts: the exact row count of each table named in the parameter tables (a list of names).
-- Each name is quoted as an identifier by format(), so a name read from a manifest never becomes SQL.
SELECT t.name,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM %%I', t.name), false, true, '')))[1]::text::bigint
         AS rows
  FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS t(name, ord)
 ORDER BY t.ord;
