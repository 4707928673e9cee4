-- Fencing and retries: the generation of an engine's last claim (a monitor's writes name it),
-- how many attempts at its current step failed in a row, and since when.
ALTER TABLE engines ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE engines ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE engines ADD COLUMN failing_since BIGINT;
