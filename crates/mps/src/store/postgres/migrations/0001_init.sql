-- mps message store, first version. Applied once, in one transaction, by whichever node starts
-- first (see migrate.rs). Why each index exists is said next to it; every one serves a query of
-- the store (read.rs, write.rs) and keeps it an index range scan at tens of millions of rows.

CREATE TABLE messages (
    id        bigint PRIMARY KEY,   -- time-ordered: also the listing order (newest first)
    app       text   NOT NULL,
    title     text,
    kind      bigint NOT NULL,
    component text,
    sender    text,
    agents    text[],               -- NULL: any agent
    content   text   NOT NULL,      -- the JSON exactly as sent (jsonb would reformat it)
    created   bigint NOT NULL,      -- Unix ms
    expires   bigint NOT NULL
);
-- GET /messages?app=: newest first within an app, read backwards, stopping after one page.
CREATE INDEX messages_app ON messages (app, id);
-- GET /messages?sender= (with or without app): the sender's messages newest first.
CREATE INDEX messages_sender ON messages (sender, id);
-- GET /messages?component=: same for a component.
CREATE INDEX messages_component ON messages (component, id);
-- GET /messages?from=&to=: a time window.
CREATE INDEX messages_created ON messages (created);
-- The sweeper: messages whose expiry passed since the last sweep, and those past retention.
CREATE INDEX messages_expires ON messages (expires);

CREATE TABLE recipients (
    message_id bigint   NOT NULL,
    app        text     NOT NULL,
    recipient  text     NOT NULL,
    status     smallint NOT NULL,   -- 0 pending, 1 delivered, 2 acked, 3 expired
    updated    bigint   NOT NULL,
    -- A message's recipients (GET /messages/{id}, summaries, delete, sweep), and the
    -- per-recipient status change of delivery and ack.
    PRIMARY KEY (message_id, recipient)
);
-- The hot path: a connecting user's pending messages, oldest first (backlog, pull). Partial:
-- only pending rows, which are few once delivered, so it stays small and cached.
CREATE INDEX recipients_pending ON recipients (app, recipient, message_id) WHERE status = 0;
-- GET /messages?receiver=[&status=]: a user's messages (in a status), newest first.
CREATE INDEX recipients_user ON recipients (recipient, status, message_id);

-- Per-app counter of topic messages. Appending takes the app's row lock until commit, so the
-- order of `seq` is the order of commits across all nodes: a resume by `seq` has no gaps.
CREATE TABLE topic_apps (
    app text PRIMARY KEY,
    seq bigint NOT NULL
);

CREATE TABLE topics (
    app         text   NOT NULL,
    topic       text   NOT NULL,
    -- Greatest id / seq dropped from the log: a client whose last message is below it missed
    -- messages.
    trimmed     bigint NOT NULL DEFAULT 0,
    trimmed_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (app, topic)
);

CREATE TABLE topic_log (
    app     text   NOT NULL,
    topic   text   NOT NULL,
    id      bigint NOT NULL,
    seq     bigint NOT NULL,
    created bigint NOT NULL,
    frame   text   NOT NULL,
    -- Finds a resuming client's last message (its seq) by id.
    PRIMARY KEY (app, id)
);
-- Replay after a seq, per topic, in commit order; trimming a topic by count or age.
CREATE INDEX topic_log_seq ON topic_log (app, topic, seq);

-- The sweeper's progress: recipients of messages that expired up to here are marked already.
-- Its row lock also lets one node sweep at a time (the others skip).
CREATE TABLE sweeps (
    id           int    PRIMARY KEY,
    expired_upto bigint NOT NULL
);
INSERT INTO sweeps (id, expired_upto) VALUES (1, 0);
