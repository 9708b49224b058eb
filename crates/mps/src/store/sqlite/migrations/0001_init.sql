-- mps embedded store, first version: directed messages, their recipients and topic logs.
-- Every statement creates only what is missing, so that a store of a release before numbered
-- migrations can take it (see migrate.rs).
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,
    app       TEXT NOT NULL,
    title     TEXT,
    kind      INTEGER NOT NULL,
    component TEXT,
    sender    TEXT,
    agents    TEXT,  -- ',ios,bs,': one instr() checks membership
    content   TEXT NOT NULL,
    created   INTEGER NOT NULL,
    expires   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_expires ON messages(expires);
CREATE TABLE IF NOT EXISTS recipients (
    message_id INTEGER NOT NULL,
    app        TEXT NOT NULL,
    user       TEXT NOT NULL,
    -- 0 pending, 1 delivered, 2 acked, 3 expired.
    status     INTEGER NOT NULL,
    updated    INTEGER NOT NULL,
    PRIMARY KEY (message_id, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_user ON recipients(app, user, status, message_id);
CREATE TABLE IF NOT EXISTS topics (
    app     TEXT NOT NULL,
    topic   TEXT NOT NULL,
    -- Greatest id dropped from the log: a client whose last id is below it missed messages.
    trimmed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topic_log (
    app     TEXT NOT NULL,
    topic   TEXT NOT NULL,
    id      INTEGER NOT NULL,
    created INTEGER NOT NULL,
    frame   TEXT NOT NULL,
    PRIMARY KEY (app, topic, id)
) WITHOUT ROWID;
