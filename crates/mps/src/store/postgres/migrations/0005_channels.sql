-- Channels of a directed message per recipient besides the live one and the vendor push: the
-- steps of its chain (`due` until they ran, Unix ms; any node's runner claims them) and their
-- outcomes (`status`, a ChannelStatus: scheduled, queued, sent, failed, muted, cancelled...).
CREATE TABLE channel_steps (
    message_id bigint NOT NULL,
    app        text   NOT NULL,
    recipient  text   NOT NULL,
    channel    text   NOT NULL,   -- push, webhook, email
    status     text   NOT NULL,
    due        bigint,
    reason     text,
    updated    bigint NOT NULL,
    -- A message's rows (its record, delete, sweep) and the update of one step.
    PRIMARY KEY (message_id, recipient, channel)
);
-- The chain's runner: steps that came due. Partial: settled steps leave it.
CREATE INDEX channel_steps_due ON channel_steps (due) WHERE due IS NOT NULL;
