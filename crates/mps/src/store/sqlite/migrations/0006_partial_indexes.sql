-- Listing by sender or component. Partial: most messages have no sender or component, and an
-- index entry per message costs the writer on every insert. Replaces the full indexes of
-- earlier releases.
DROP INDEX IF EXISTS messages_sender;
DROP INDEX IF EXISTS messages_component;
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages(app, sender, id) WHERE sender IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_component ON messages(app, component, id)
    WHERE component IS NOT NULL;
