// (b) The SDK in a real browser, loaded from the server's /sdk/mps.js: directed and topic
// messages, a server killed and restarted mid-stream, every message exactly once and in order;
// and the /demo page.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';

import { Mps, launchBrowser, openPage, sdkPage, until, sleep } from './harness.js';

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

test('the SDK is served with its types', async () => {
  for (const [p, type] of [['/sdk/mps.js', 'text/javascript'], ['/sdk/mps.d.ts', 'application/typescript'], ['/demo', 'text/html']]) {
    const res = await fetch(`${mps.http}${p}`);
    assert.equal(res.status, 200, p);
    assert.ok(res.headers.get('content-type').startsWith(type), `${p}: ${res.headers.get('content-type')}`);
  }
});

test('directed and topic messages arrive exactly once and in order across a server restart', async () => {
  const { token } = await mps.token('alice');
  const page = await openPage(browser.context, mps, sdkPage({
    url: mps.ws, token, topics: ['alarms/#'], components: ['esbm'], backoffBase: 200, backoffCap: 2000,
  }));
  await until(async () => (await events(page, 'open')).length, 10000, 'the SDK to open');
  assert.equal((await events(page, 'open'))[0].transport, 'websocket');

  // Directed (durable, acked) and topic (retained) messages, alternating; the server is killed
  // with SIGKILL after the 12th and started again on the same port and data directory while the
  // publisher keeps going (its sends retry while the server is down).
  const TOTAL = 30;
  const sent = [];
  for (let n = 1; n <= TOTAL; n++) {
    const directed = n % 2 === 1;
    const body = directed
      ? { content: { n }, receiver: ['alice'], title: `directed ${n}` }
      : { content: { n }, topic: `alarms/site1/room${n % 3}`, title: `topic ${n}` };
    const answer = await mps.sendSurely(body);
    sent.push({ n, id: answer.id, directed });
    if (n === 12) {
      await until(async () => (await page.evaluate(() => window.got.length)) >= 6, 10000, 'some messages before the restart');
      await mps.restart();
    }
    await sleep(20);
  }

  const got = await until(async () => {
    const g = await page.evaluate(() => window.got);
    return g.length >= TOTAL && g;
  }, 30000, `all ${TOTAL} messages (page log: ${page.logs.join(' | ')})`);
  await sleep(500); // anything more would be a duplicate: give it the chance to show
  const final = await page.evaluate(() => window.got);
  const ns = final.map((m) => m.EventData.ext.n);
  assert.equal(new Set(ns).size, final.length, `no duplicates: ${ns}`);
  assert.deepEqual([...ns].sort((a, b) => a - b), sent.map((s) => s.n), 'every message once');
  // Each class in publishing order. Across classes the order after a reconnect is the server's
  // catch-up order (retained topic messages, then pending directed ones), so only per class.
  const directed = final.filter((m) => m.ack).map((m) => m.EventData.ext.n);
  const topical = final.filter((m) => m.topic).map((m) => m.EventData.ext.n);
  assert.deepEqual(directed, sent.filter((s) => s.directed).map((s) => s.n), 'directed in order');
  assert.deepEqual(topical, sent.filter((s) => !s.directed).map((s) => s.n), 'topic messages in order');
  assert.deepEqual(got.map((m) => m.id), final.map((m) => m.id));
  for (const m of final) assert.equal(m.id, sent.find((s) => s.n === m.EventData.ext.n).id);

  // The client reconnected on WebSocket (no fallback) and resumed after the greatest id.
  assert.deepEqual(await events(page, 'transport'), []);
  assert.ok((await events(page, 'open')).length >= 2);
  const lastId = await page.evaluate(() => window.client.lastId);
  assert.equal(lastId, sent.map((s) => s.id).reduce((a, b) => (BigInt(a) > BigInt(b) ? a : b)));

  // Acks: nothing directed is left pending (and those acked over the new connection are acked).
  await until(async () => {
    const pending = await mps.api('GET', '/api/v1/messages?receiver=alice&status=pending&size=100');
    const acked = await mps.api('GET', '/api/v1/messages?receiver=alice&status=acked&size=100');
    return pending.total === 0 && acked.total >= TOTAL / 2 - 2;
  }, 10000, 'directed messages acknowledged');
  await page.close();
});

test('the demo page lists pushed messages newest on top', async () => {
  const { token } = await mps.token('carol');
  const page = await browser.context.newPage();
  await page.goto(`${mps.http}/demo?token=${encodeURIComponent(token)}&topics=${encodeURIComponent('plant/#')}`);
  await page.locator('#status', { hasText: 'connected over websocket' }).waitFor({ timeout: 10000 });
  await mps.send({ content: { alarm: 'fire', room: '2-17' }, receiver: ['carol'], title: 'Fire alarm', sender: 'alarm-console' });
  await mps.send({ content: { level: 3 }, topic: 'plant/boiler', title: 'Boiler pressure' });
  await until(async () => (await page.locator('#list tr').count()) === 2, 10000, 'two rows');
  const titles = await page.locator('#list tr td:nth-child(2)').allTextContents();
  assert.deepEqual(titles, ['Boiler pressure', 'Fire alarm']);
  assert.equal(await page.locator('#total').textContent(), '2');
  assert.match(await page.locator('#list tr').first().textContent(), /plant\/boiler/);
  await page.close();
});

test('a page on another origin imports the SDK from the server and receives over WebSocket', async () => {
  const { token } = await mps.token('heidi');
  const site = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><meta charset="utf-8"><ul id="list"></ul><script type="module">
      import { connect } from '${mps.http}/sdk/mps.js';
      const push = connect({ url: '${mps.ws}', token: '${token}' });
      push.on('open', (e) => { document.title = 'open ' + e.transport; });
      push.on('message', (m) => {
        const li = document.createElement('li');
        li.textContent = m.EventData.ext.text;
        document.getElementById('list').prepend(li);
      });
    </script>`);
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  try {
    const page = await browser.context.newPage();
    await page.goto(`http://127.0.0.1:${site.address().port}/`);
    await until(async () => (await page.title()) === 'open websocket', 10000, 'the SDK to open');
    await mps.send({ content: { text: 'hello from another origin' }, receiver: ['heidi'] });
    await page.locator('#list li', { hasText: 'hello from another origin' }).waitFor({ timeout: 10000 });
    await page.close();
  } finally {
    site.close();
  }
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: subscribe() replaces the topics of a live client`, async () => {
    const user = `ivan-${transport}`;
    const { token } = await mps.token(user);
    const page = await openPage(browser.context, mps, sdkPage({ url: mps.ws, token, topics: [`old/${user}`], transports: [transport] }));
    await until(async () => (await events(page, 'open')).length, 10000, 'the SDK to open');
    const first = await mps.send({ content: { n: 1 }, topic: `old/${user}` });
    await until(async () => (await page.evaluate(() => window.got.length)) === 1, 10000, 'the first message');
    await page.evaluate((u) => window.client.subscribe({ topics: [`new/${u}/#`] }), user);
    // WebSocket answers Type 8 on the same connection; SSE and polling reconnect with the new query.
    await until(async () => (await mps.api('GET', '/api/v1/clients')).some((c) => c.user === user), 10000, 'the client online');
    await new Promise((r) => setTimeout(r, 500));
    await mps.send({ content: { n: 2 }, topic: `old/${user}` });
    const third = await mps.send({ content: { n: 3 }, topic: `new/${user}/x` });
    await until(async () => (await page.evaluate(() => window.got.length)) >= 2, 10000, 'a message on the new topic');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual((await page.evaluate(() => window.got)).map((m) => m.id), [first.id, third.id]);
    await page.close();
  });
}
