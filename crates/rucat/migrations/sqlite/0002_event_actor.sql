-- Who caused each state change: "user:NAME" or "monitor:NAME" (NULL in events recorded before).
ALTER TABLE engine_events ADD COLUMN actor TEXT;
