-- Channels of a directed message per recipient besides the live one and the vendor push: the
-- steps of its chain (`due` until they ran, Unix ms) and their outcomes (`status`, a
-- `ChannelStatus`).
CREATE TABLE IF NOT EXISTS channel_steps (
    message_id INTEGER NOT NULL,
    app        TEXT NOT NULL,
    user       TEXT NOT NULL,
    channel    TEXT NOT NULL,
    status     TEXT NOT NULL,
    due        INTEGER,
    reason     TEXT,
    updated    INTEGER NOT NULL,
    PRIMARY KEY (message_id, user, channel)
) WITHOUT ROWID;
-- The chain's runner: steps that came due.
CREATE INDEX IF NOT EXISTS channel_steps_due ON channel_steps(due) WHERE due IS NOT NULL;
