-- Audiences (user tags and attributes, agent exceptions), per-agent formats and user
-- preferences.

-- Tags and attributes of users as `key:value` terms (`tag:vip`, `lang:zh`). The primary key
-- serves a user's terms and the per-user checks of an audience query; the index, the users of
-- one term (an index range scan that drives the query).
CREATE TABLE user_tags (
    app     text NOT NULL,
    user_id text NOT NULL,
    tag     text NOT NULL,
    PRIMARY KEY (app, user_id, tag)
);
CREATE INDEX user_tags_tag ON user_tags (app, tag, user_id);

-- Agents whose connections do not get a message (an audience's `NOT agent:` terms); NULL: none.
ALTER TABLE messages ADD COLUMN except_agents text[];
-- Per-agent shapes of a message as JSON ({"ios": {"title": ..., "content": ...}}); NULL: none.
ALTER TABLE messages ADD COLUMN formats text;

-- Users' preferences about vendor push (muted components and channels, quiet hours), as JSON.
CREATE TABLE preferences (
    app     text NOT NULL,
    user_id text NOT NULL,
    doc     text NOT NULL,
    PRIMARY KEY (app, user_id)
);
