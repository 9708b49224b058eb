-- Idempotency keys: the first message sent with a key in an app is the only one recorded until
-- the key lapses.
CREATE TABLE IF NOT EXISTS idempotency (
    app        TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    PRIMARY KEY (app, key)
) WITHOUT ROWID;
-- The sweeper deletes lapsed keys.
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency(expires);
