-- Check current capital state
SELECT j.id, j.name,
       COUNT(p.id) as prestamos_count,
       COUNT(m.id) as multas_count,
       COUNT(a.id) as acciones_count
FROM "Junta" j
LEFT JOIN "Prestamo" p ON p.junta_id = j.id
LEFT JOIN "Multa" m ON m.junta_id = j.id
LEFT JOIN "Accion" a ON a.junta_id = j.id
GROUP BY j.id, j.name;
