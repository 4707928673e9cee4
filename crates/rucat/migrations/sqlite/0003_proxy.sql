-- The Spark Connect proxy: each engine's secret (made anew at each start, never shown), its idle
-- timeout, and what each proxy reports of its calls.
ALTER TABLE engines ADD COLUMN secret TEXT;
ALTER TABLE engines ADD COLUMN idle_timeout_minutes INTEGER NOT NULL DEFAULT 0;

-- One row per engine and proxy, replaced at each report: calls under way through that proxy,
-- when the last one ended, and when the proxy reported (a proxy that stops reporting stops
-- counting). Times are milliseconds since the Unix epoch.
CREATE TABLE engine_activity (
    engine_id   TEXT    NOT NULL,
    proxy       TEXT    NOT NULL,
    in_flight   INTEGER NOT NULL,
    last_active INTEGER,
    reported_at INTEGER NOT NULL,
    PRIMARY KEY (engine_id, proxy)
);
