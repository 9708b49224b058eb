// (d) The browser's own EventSource on GET /sse, no SDK: when the server drops the stream (an
// operator's disconnect, or a restart) EventSource reconnects by itself with Last-Event-ID, and
// the topic messages published meanwhile arrive. The page drops repeats by id, as
// docs/protocol.md asks of clients (a resume repeats `topics.resume_overlap_ms` before the last
// id); what is repeated must be from before the resume point, never a message twice after it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Mps, launchBrowser, openPage, until } from './harness.js';

let mps;
let browser;

before(async () => {
  mps = await Mps.start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await mps?.stop();
});

/** A page with a native EventSource on /sse; records events and the requests' Last-Event-ID. */
async function nativePage(user, topic) {
  const { token } = await mps.token(user);
  const requests = [];
  const page = await openPage(browser.context, mps, `(() => {
    window.got = [];
    window.repeats = [];
    window.opens = 0;
    window.errors = 0;
    const es = new EventSource('/sse?token=${encodeURIComponent(token)}&topics=${encodeURIComponent(topic)}');
    es.onopen = () => { window.opens++; };
    es.onerror = () => { window.errors++; };
    es.onmessage = (e) => {
      const event = { lastEventId: e.lastEventId, frame: JSON.parse(e.data) };
      (window.got.some((g) => g.lastEventId === e.lastEventId) ? window.repeats : window.got).push(event);
    };
  })()`, {
    setup: (p) => p.on('request', async (r) => {
      if (new URL(r.url()).pathname === '/sse') requests.push((await r.allHeaders())['last-event-id'] ?? null);
    }),
  });
  await until(() => page.evaluate(() => window.opens === 1), 10000, 'the event stream to open');
  return { page, requests };
}

const got = (page) => page.evaluate(() => window.got);

async function publish(topic, from, to) {
  const ids = [];
  for (let n = from; n <= to; n++) ids.push((await mps.sendSurely({ content: { n }, topic, title: `n${n}` })).id);
  return ids;
}

/** Repeats are allowed only of messages at or before the resume point. */
async function assertRepeatsBefore(page, resumeId) {
  for (const e of await page.evaluate(() => window.repeats)) {
    assert.ok(BigInt(e.lastEventId) <= BigInt(resumeId), `repeated ${e.lastEventId}, after the resume point ${resumeId}`);
  }
}

function assertExactlyOnce(events, ids) {
  assert.deepEqual(events.map((e) => e.frame.Message.id), ids, 'every message once, in order');
  for (const e of events) {
    assert.equal(e.lastEventId, e.frame.Message.id, 'each event\'s id is the message id');
    assert.equal(e.frame.Type, 3);
  }
}

test('an operator disconnect: EventSource resumes with Last-Event-ID', async () => {
  const { page, requests } = await nativePage('frank', 'news/#');
  const before = await publish('news/a', 1, 3);
  await until(async () => (await got(page)).length === 3, 10000, 'three events');

  const clients = await mps.api('GET', '/api/v1/clients');
  const mine = clients.filter((c) => c.user === 'frank');
  assert.equal(mine.length, 1, JSON.stringify(clients));
  await mps.api('POST', `/api/v1/clients/${mine[0].id}/disconnect`);
  // Published while the stream is down (EventSource waits `retry: 3000` before reconnecting).
  const during = await publish('news/b', 4, 6);

  await until(async () => (await got(page)).length >= 6 && page.evaluate(() => window.opens === 2), 15000,
    `the stream to reopen and catch up (page log: ${page.logs.join(' | ')})`);
  assertExactlyOnce(await got(page), [...before, ...during]);
  assert.deepEqual(requests, [null, before[2]], 'the second request carried Last-Event-ID');
  await assertRepeatsBefore(page, before[2]);

  const after = await publish('news/c', 7, 8); // live again
  await until(async () => (await got(page)).length === 8, 10000, 'live events after the resume');
  assertExactlyOnce(await got(page), [...before, ...during, ...after]);
  await page.close();
});

test('a server restart: EventSource resumes with Last-Event-ID from the durable retained log', async () => {
  const { page, requests } = await nativePage('grace', 'plant/#');
  const before = await publish('plant/boiler', 1, 3);
  await until(async () => (await got(page)).length === 3, 10000, 'three events');

  await mps.kill(); // SIGKILL
  const addr = mps.addr;
  await mps.spawn(addr); // same port, same data directory
  const during = await publish('plant/boiler', 4, 6); // likely before the browser is back

  await until(async () => (await got(page)).length >= 6, 20000,
    `the stream to reopen and catch up (page log: ${page.logs.join(' | ')})`);
  assertExactlyOnce(await got(page), [...before, ...during]);
  assert.equal(requests[0], null);
  assert.equal(requests.at(-1), before[2], 'the reconnect carried Last-Event-ID');
  await assertRepeatsBefore(page, before[2]);
  assert.ok(await page.evaluate(() => window.opens >= 2));
  await page.close();
});
