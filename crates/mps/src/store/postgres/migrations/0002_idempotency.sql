-- Idempotency keys: the first message sent with a key in an app is the only one recorded until
-- the key lapses.
CREATE TABLE idempotency (
    app        text   NOT NULL,
    key        text   NOT NULL,
    message_id bigint NOT NULL,
    created    bigint NOT NULL,
    expires    bigint NOT NULL,
    -- Claiming a key (one upsert on it).
    PRIMARY KEY (app, key)
);
-- The sweeper deletes lapsed keys.
CREATE INDEX idempotency_expires ON idempotency (expires);
