-- Verify capital calculations
SELECT
    j.id,
    j.name,
    j.current_capital,
    j.available_capital,
    ABS(j.current_capital - j.available_capital) as discrepancy
FROM "Junta" j
WHERE ABS(j.current_capital - j.available_capital) > 0.01;
