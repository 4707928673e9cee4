-- Why each event happened: a JSON object {"kind": …} (NULL in events recorded before).
ALTER TABLE engine_events ADD COLUMN cause TEXT;
