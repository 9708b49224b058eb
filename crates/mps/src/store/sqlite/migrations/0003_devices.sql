-- Vendor push (APNs, FCM, Web Push): the push result of a recipient still pending, and the
-- device registrations (push modes).

-- Vendor push of a message still pending: NULL none, 1 pushed, 2 failed (with reason).
ALTER TABLE recipients ADD COLUMN push INTEGER;
ALTER TABLE recipients ADD COLUMN reason TEXT;

-- A token belongs to one registration of an app and way.
CREATE TABLE IF NOT EXISTS devices (
    app        TEXT NOT NULL,
    user       TEXT NOT NULL,
    device     TEXT NOT NULL,
    way        TEXT NOT NULL,
    agent      TEXT NOT NULL,
    token      TEXT NOT NULL,
    components TEXT NOT NULL,  -- JSON array
    refreshed  INTEGER NOT NULL,
    PRIMARY KEY (app, user, device, way)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS devices_token ON devices(app, way, token);
CREATE INDEX IF NOT EXISTS devices_refreshed ON devices(refreshed);
