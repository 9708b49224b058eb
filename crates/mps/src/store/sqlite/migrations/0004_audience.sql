-- Audiences (user tags and attributes, agent exceptions), per-agent formats and user
-- preferences.

-- Agents whose connections do not get a message (',cs,'), and per-agent shapes as JSON.
ALTER TABLE messages ADD COLUMN except_agents TEXT;
ALTER TABLE messages ADD COLUMN formats TEXT;

-- Tags and attributes of users as `key:value` terms (`tag:vip`, `lang:zh`). The primary key
-- serves a user's terms and the per-user checks of an audience; the index, the users of a term.
CREATE TABLE IF NOT EXISTS user_tags (
    app     TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tag     TEXT NOT NULL,
    PRIMARY KEY (app, user_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_tags_tag ON user_tags(app, tag, user_id);

-- Users' preferences about vendor push, as JSON.
CREATE TABLE IF NOT EXISTS preferences (
    app     TEXT NOT NULL,
    user_id TEXT NOT NULL,
    doc     TEXT NOT NULL,
    PRIMARY KEY (app, user_id)
) WITHOUT ROWID;
