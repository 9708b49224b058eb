-- Vendor push (APNs, FCM, Web Push): the push result of a recipient still pending, and the
-- device registrations (push modes).

-- A pending recipient (status 0) whose message went to a vendor: 1 pushed, 2 failed (reason
-- says why). It stays pending for the live channel, so the backlog index is unchanged.
ALTER TABLE recipients ADD COLUMN push smallint, ADD COLUMN reason text;

CREATE TABLE devices (
    app        text   NOT NULL,
    username   text   NOT NULL,
    device     text   NOT NULL,
    way        text   NOT NULL,   -- apns, fcm, webpush
    agent      text   NOT NULL,
    token      text   NOT NULL,   -- device token, or the Web Push subscription JSON
    components text[] NOT NULL,   -- empty: every component
    refreshed  bigint NOT NULL,   -- Unix ms
    -- Register, refresh and unregister one way of a device; a user's registrations (fallback,
    -- logout, the operator's listing).
    PRIMARY KEY (app, username, device, way)
);
-- A token belongs to one registration of an app and way: registering it again elsewhere takes
-- it, and the vendor's "gone" removes it.
CREATE UNIQUE INDEX devices_token ON devices (app, way, token);
-- The sweeper: registrations not refreshed in time.
CREATE INDEX devices_refreshed ON devices (refreshed);
