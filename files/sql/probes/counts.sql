-- counts: what the migration would backfill.
SELECT 'Accion' AS source, count(*) AS rows FROM "Accion"
UNION ALL SELECT 'Multa', count(*) FROM "Multa"
UNION ALL SELECT 'Prestamo', count(*) FROM "Prestamo"
UNION ALL SELECT 'PagoPrestamo', count(*) FROM "PagoPrestamo"
UNION ALL SELECT 'Junta', count(*) FROM "Junta";
