-- Engine records, their bounded event history and their captured driver logs.
--
-- Times are BIGINT milliseconds since the Unix epoch (UTC), as in the SQLite store.

CREATE TABLE engines (
    -- Creation order; the pagination cursor. Never reused.
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT   NOT NULL UNIQUE,
    name             TEXT   NOT NULL,
    owner            TEXT   NOT NULL,
    engine_type      TEXT   NOT NULL,
    version          TEXT   NOT NULL,
    -- A JSON object of string to string.
    configs          TEXT   NOT NULL,
    state            TEXT   NOT NULL,
    error            TEXT,
    endpoint         TEXT,
    create_time      BIGINT NOT NULL,
    update_time      BIGINT NOT NULL,
    -- When a monitor should look at the engine next; NULL when nothing is due.
    next_update_time BIGINT
);

-- Only engines with something due are indexed, so `list_due` costs what is due, not all engines.
CREATE INDEX engines_due ON engines (next_update_time, seq) WHERE next_update_time IS NOT NULL;
CREATE INDEX engines_state ON engines (state, seq);
CREATE INDEX engines_owner ON engines (owner, seq);

CREATE TABLE engine_events (
    seq        BIGSERIAL PRIMARY KEY,
    engine_seq BIGINT NOT NULL REFERENCES engines (seq) ON DELETE CASCADE,
    time       BIGINT NOT NULL,
    from_state TEXT,
    to_state   TEXT   NOT NULL,
    message    TEXT
);

CREATE INDEX engine_events_engine ON engine_events (engine_seq, seq);

CREATE TABLE engine_logs (
    engine_seq BIGINT PRIMARY KEY REFERENCES engines (seq) ON DELETE CASCADE,
    text       TEXT   NOT NULL,
    time       BIGINT NOT NULL
);
