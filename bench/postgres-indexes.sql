-- The message-record queries of the PostgreSQL store on 5 million messages and 10 million
-- recipients (docs/cluster.md, "Indexes, checked at ten million rows"). From the repository root:
--   psql -h 127.0.0.1 -U postgres -d test -f bench/postgres-indexes.sql > explain.txt
-- Fills a schema `mps_explain` (dropped first; a few minutes on 2 cores), then EXPLAIN ANALYZEs
-- each query the store runs. Drop the schema afterwards: DROP SCHEMA mps_explain CASCADE.
DROP SCHEMA IF EXISTS mps_explain CASCADE;
CREATE SCHEMA mps_explain;
SET search_path = mps_explain;
\i crates/mps/src/store/postgres/migrations/0001_init.sql
\timing on
-- 5M messages over 30 days, 20 senders, 50 components, 2 apps; ids time-ordered like the real ones.
INSERT INTO messages (id, app, title, kind, component, sender, agents, content, created, expires)
SELECT ((g * 500) << 23) | 1,  -- 500 ms apart, node 1
       CASE WHEN g % 10 = 0 THEN 'oa' ELSE 'default' END,
       'title ' || g, 0, 'comp' || (g % 50), 'sender' || (g % 20), NULL,
       '{"n":' || g || '}', 1704067200000 + g * 500, 1704067200000 + g * 500 + 259200000
FROM generate_series(1::bigint, 5000000::bigint) g;
-- One recipient each among 200,000 users and one of 100 "boss" users each; most delivered or
-- acked, a few pending.
INSERT INTO recipients (message_id, app, recipient, status, updated)
SELECT m.id, m.app, 'user' || (hashint8(m.id) & 262143)::int % 200000,
       CASE WHEN m.id % 97 = 0 THEN 0 WHEN m.id % 3 = 0 THEN 1 ELSE 2 END, m.created
FROM messages m;
INSERT INTO recipients (message_id, app, recipient, status, updated)
SELECT m.id, m.app, 'boss' || (m.id % 100), CASE WHEN m.id % 7 = 0 THEN 0 ELSE 2 END, m.created
FROM messages m
ON CONFLICT DO NOTHING;
VACUUM ANALYZE messages;
VACUUM ANALYZE recipients;
SELECT count(*) FROM messages; SELECT count(*) FROM recipients;
\echo === pending (backlog)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id, m.title, m.kind, m.component, m.sender, m.created, m.content
 FROM recipients r JOIN messages m ON m.id = r.message_id
 WHERE r.app = 'default' AND r.recipient = 'user4242' AND r.status = 0 AND r.message_id > 0
   AND m.expires > 1704067200000 AND ('bs'::text IS NULL OR m.agents IS NULL OR 'bs' = ANY(m.agents))
 ORDER BY r.message_id LIMIT 500;
\echo === list receiver: count and page
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM messages m WHERE m.id IN (SELECT message_id FROM recipients WHERE recipient = 'user4242');
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m WHERE m.id IN (SELECT message_id FROM recipients WHERE recipient = 'user4242') ORDER BY m.id DESC LIMIT 20 OFFSET 0;
\echo === list receiver+status
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m WHERE m.id IN (SELECT message_id FROM recipients WHERE recipient = 'boss7' AND status = 0) ORDER BY m.id DESC LIMIT 20;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM messages m WHERE m.id IN (SELECT message_id FROM recipients WHERE recipient = 'boss7' AND status = 0);
\echo === list sender page and count
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m WHERE m.sender = 'sender7' ORDER BY m.id DESC LIMIT 20 OFFSET 100;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM messages m WHERE m.sender = 'sender7';
\echo === list app page, all page, all count
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m WHERE m.app = 'oa' ORDER BY m.id DESC LIMIT 20;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m ORDER BY m.id DESC LIMIT 20;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM messages m;
\echo === list status only
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = 0) ORDER BY m.id DESC LIMIT 20;
\echo === window
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT m.id FROM messages m WHERE m.created >= 1704067200000 + 1000000000 AND m.created < 1704067200000 + 1003600000 ORDER BY m.id DESC LIMIT 20;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM messages m WHERE m.created >= 1704067200000 + 1000000000 AND m.created < 1704067200000 + 1003600000;
\echo === summaries of a page
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT message_id, status, count(*) FROM recipients WHERE message_id = ANY(ARRAY(SELECT id FROM messages ORDER BY id DESC LIMIT 20)) GROUP BY message_id, status;
\echo === mark delivered / sweep window
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) UPDATE recipients SET status = 1, updated = 1 WHERE app = 'default' AND recipient = 'user4242' AND message_id = ANY(ARRAY(SELECT message_id FROM recipients WHERE recipient='user4242' LIMIT 5)) AND status < 1;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) UPDATE recipients SET status = 3, updated = 1 WHERE status < 2 AND message_id IN (SELECT id FROM messages WHERE expires > 1704067200000 + 1000000000 AND expires <= 1704067200000 + 1000060000);
ROLLBACK;
