// (c) Fallback in a real browser: with WebSocket blocked the SDK moves to Server-Sent Events, and
// with both blocked to long polling, and still gets (and acknowledges) directed and topic messages.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Mps, launchBrowser, openPage, sdkPage, until, closedPort, sleep } from './harness.js';

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

const events = (page, name) => page.evaluate((n) => window.events.filter(([e]) => e === n).map(([, v]) => v), name);

/**
 * Publishes a directed and a topic message to `user`; checks both arrive and the directed one is
 * acked. Each test has its own topics: a resume replays `topics.resume_overlap_ms` of history
 * before the last id, which could bring another test's message published just before.
 */
async function receivesAndAcks(page, user) {
  const directed = await mps.send({ content: { kind: 'directed', user }, receiver: [user], title: 'directed' });
  const topical = await mps.send({ content: { kind: 'topic', user }, topic: `fallback/${user}/x`, title: 'topic' });
  const got = await until(async () => {
    const g = await page.evaluate(() => window.got);
    return g.length >= 2 && g;
  }, 15000, `two messages (page log: ${page.logs.join(' | ')})`);
  assert.deepEqual(got.map((m) => m.id).sort(), [directed.id, topical.id].sort());
  const byId = Object.fromEntries(got.map((m) => [m.id, m]));
  assert.deepEqual(byId[directed.id].EventData.ext, { kind: 'directed', user });
  assert.equal(byId[directed.id].ack, true);
  assert.deepEqual(byId[topical.id].EventData.ext, { kind: 'topic', user });
  assert.equal(byId[topical.id].topic, `fallback/${user}/x`);
  // On SSE and polling the SDK acknowledges with POST /api/v1/ack.
  await until(async () => {
    const record = await mps.api('GET', `/api/v1/messages/${directed.id}`);
    return record.recipients[0].status === 'acked';
  }, 10000, 'the directed message to be acked over HTTP');
}

test('WebSocket refused: falls back to Server-Sent Events', async () => {
  const { token } = await mps.token('dave');
  // A WebSocket URL where nothing listens (as behind a proxy that refuses upgrades); HTTP is fine.
  const url = `ws://127.0.0.1:${await closedPort()}/ws`;
  const page = await openPage(browser.context, mps, sdkPage({
    url, httpUrl: mps.http, token, topics: ['fallback/dave/#'], backoffBase: 100, backoffCap: 1000,
  }));
  await until(async () => (await events(page, 'open')).length, 15000, 'an open transport');
  assert.deepEqual(await events(page, 'transport'), [{ from: 'websocket', to: 'sse' }]);
  assert.equal((await events(page, 'open'))[0].transport, 'sse');
  assert.equal((await events(page, 'close')).filter((c) => c.transport === 'websocket').length, 2);
  const clients = await mps.api('GET', '/api/v1/clients');
  assert.ok(clients.some((c) => c.user === 'dave'), JSON.stringify(clients));
  await receivesAndAcks(page, 'dave');
  await page.close();
});

test('WebSocket and EventSource blocked: falls back to long polling', async () => {
  const { token } = await mps.token('erin');
  const page = await openPage(browser.context, mps, sdkPage({
    url: mps.ws, token, topics: ['fallback/erin/#'], backoffBase: 100, backoffCap: 1000,
  }), {
    setup: async (p) => {
      // WebSocket forbidden by the page's environment, /sse cut by the network.
      await p.addInitScript(() => {
        window.WebSocket = function WebSocket() { throw new DOMException('WebSocket is blocked', 'SecurityError'); };
      });
      await p.route((u) => u.pathname === '/sse', (route) => route.abort('connectionrefused'));
    },
  });
  await until(async () => (await events(page, 'open')).length, 20000, 'an open transport');
  assert.deepEqual(await events(page, 'transport'), [{ from: 'websocket', to: 'sse' }, { from: 'sse', to: 'poll' }]);
  assert.equal((await events(page, 'open'))[0].transport, 'poll');
  await receivesAndAcks(page, 'erin');
  // The next poll resumes from the greatest id received.
  const polls = [];
  page.on('request', (r) => { if (new URL(r.url()).pathname === '/poll') polls.push(new URL(r.url())); });
  await mps.send({ content: { kind: 'third' }, topic: 'fallback/erin/x' });
  await until(async () => (await page.evaluate(() => window.got.length)) === 3, 15000, 'a third message');
  await until(() => polls.length >= 1, 10000, 'the next poll');
  const lastId = await page.evaluate(() => window.client.lastId);
  assert.equal(polls.at(-1).searchParams.get('since'), lastId);
  assert.equal(polls.at(-1).searchParams.get('timeout'), '25');
  // Idle, a long poll waits on the server: a few seconds bring no new request.
  const idleFrom = polls.length;
  await sleep(3000);
  assert.ok(polls.length - idleFrom <= 1, `${polls.length - idleFrom} polls in 3 idle seconds (since=${lastId}): the server answers a long poll at once`);
  await page.close();
});
