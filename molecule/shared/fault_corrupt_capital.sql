-- The rollback scenario's injected fault: one junta's current_capital off by
-- one cent, written behind the triggers' back, after the migration applied
-- and before its verify stage reads anything (capital_fault callback).
-- Expects: a migrated database. Leaves: one corrupted "Junta" row; prints its id.
UPDATE "Junta" SET current_capital = current_capital + 0.01
 WHERE id = (SELECT min(id) FROM "Junta")
RETURNING id;
