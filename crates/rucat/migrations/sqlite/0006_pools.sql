-- Warm pools: the pool a warm engine belongs to until a create takes it (NULL otherwise), and
-- the secret its Spark Connect server was started with while the take's new one is handed over.
ALTER TABLE engines ADD COLUMN pool TEXT;
ALTER TABLE engines ADD COLUMN handover_secret TEXT;
CREATE INDEX engines_pool ON engines (pool) WHERE pool IS NOT NULL;
