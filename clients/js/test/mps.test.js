// Unit tests of mps.js with fake transports: `node --test clients/js/test/`.

import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  connect, compareIds, backoffDelay, httpBase, RecentIds, subscribePush, unsubscribePush, deviceId,
  base64UrlBytes,
} from '../mps.js';

// ---- fakes: each records what the SDK does and lets the test play the server ----------------

class FakeWebSocket {
  static instances = [];
  /** When set, the constructor throws it (a blocked or forbidden WebSocket). */
  static throwOnCreate = null;

  constructor(url) {
    if (FakeWebSocket.throwOnCreate) throw FakeWebSocket.throwOnCreate;
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code) { this.closedWith = code ?? 1005; this.readyState = 3; }

  // The server's side.
  accept() { this.readyState = 1; this.onopen && this.onopen({}); }
  frame(f) { this.onmessage && this.onmessage({ data: JSON.stringify(f) }); }
  session(extra = {}) { this.frame({ Type: 2, Seq: this.sent[0].Seq, Version: 1, Session: { id: '1', heartbeat: 25, timeout: 60, ...extra } }); }
  push(message) { this.frame({ Type: 3, Message: message }); }
  drop(code = 1006, reason = '') { this.readyState = 3; this.onclose && this.onclose({ code, reason }); }
  /** A socket that never opens: the error then close a browser reports for a refused connection. */
  refuse() { this.onerror && this.onerror({}); this.drop(1006); }

  static reset() { FakeWebSocket.instances = []; FakeWebSocket.throwOnCreate = null; }
  static get last() { return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]; }
}

class FakeEventSource {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.listeners = {};
    this.closed = false;
    FakeEventSource.instances.push(this);
  }
  addEventListener(name, fn) { (this.listeners[name] = this.listeners[name] || []).push(fn); }
  close() { this.closed = true; }

  accept() { this.onopen && this.onopen({}); }
  push(message) { this.onmessage && this.onmessage({ data: JSON.stringify({ Type: 3, Message: message }), lastEventId: message.id }); }
  named(name, data) { for (const fn of this.listeners[name] || []) fn({ data: JSON.stringify(data) }); }
  fail() { this.onerror && this.onerror({}); }

  static reset() { FakeEventSource.instances = []; }
  static get last() { return FakeEventSource.instances[FakeEventSource.instances.length - 1]; }
}

/**
 * A fake fetch: records every call; `answer(url, init)` returns { status, body, headers } or
 * throws (a network failure). Polls wait until the test answers them when `answer` returns
 * a promise.
 */
function fakeFetch(answer) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, init });
    const aborted = new Promise((_, reject) => init.signal && init.signal.addEventListener('abort', () => reject(new Error('aborted'))));
    const a = await Promise.race([answer(url, init), aborted]);
    const headers = new Map(Object.entries(a.headers || {}).map(([k, v]) => [k.toLowerCase(), v]));
    return {
      ok: a.status >= 200 && a.status < 300,
      status: a.status,
      headers: { get: (k) => headers.get(k.toLowerCase()) ?? null },
      json: async () => a.body,
    };
  };
  fetch.calls = calls;
  return fetch;
}

/** Waits until `cond()` is true, polling every few milliseconds; fails after `ms`. */
export async function until(cond, ms = 2000, what = 'condition') {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

/** A message as the server pushes it. */
function msg(id, extra = {}) {
  return { id, title: `m${id}`, type: 0, created: 1763780000000, EventData: { ext: { n: id } }, ...extra };
}

// ---- tests ---------------------------------------------------------------------------------

const URL_WS = 'ws://push.test:8080/ws';
const TOKEN = 'tok.en';

// Fast timers: the tests play the server and must not wait for real backoff.
const clients = [];
function client(extra = {}) {
  return remember(connect({
    url: URL_WS, token: TOKEN, WebSocket: FakeWebSocket, EventSource: FakeEventSource,
    fetch: fakeFetch(() => new Promise(() => {})), backoffBase: 1, backoffCap: 4, ...extra,
  }));
}
const remember = (c) => (clients.push(c), c);

/** Collects every event of a client. */
function record(c) {
  const events = [];
  for (const name of ['message', 'open', 'close', 'error', 'reset', 'transport']) {
    c.on(name, (v) => events.push([name, v]));
  }
  events.of = (name) => events.filter(([n]) => n === name).map(([, v]) => v);
  return events;
}

/** Waits for a new WebSocket, opens it and answers the open frame; returns it. */
async function openSocket(count) {
  await until(() => FakeWebSocket.instances.length >= count, 2000, `WebSocket #${count}`);
  const ws = FakeWebSocket.instances[count - 1];
  ws.accept();
  ws.session();
  return ws;
}

beforeEach(() => {
  FakeWebSocket.reset();
  FakeEventSource.reset();
});

afterEach(() => { // a failed test must not leave timers running
  while (clients.length) clients.pop().close();
});

test('ids compare as decimal numbers beyond 2^53, never through Number', () => {
  assert.equal(compareIds('9', '10'), -1);
  assert.equal(compareIds('10', '9'), 1);
  assert.equal(compareIds('1570637129940992', '1570637129940992'), 0);
  assert.equal(compareIds('1570637129940992', '1570637129941016'), -1);
  // Number('9007199254740993') === Number('9007199254740992'): the SDK must still tell them apart.
  assert.equal(compareIds('9007199254740993', '9007199254740992'), 1);
  assert.equal(compareIds('18446744073709551615', '18446744073709551614'), 1);
  assert.equal(compareIds('007', '7'), 0);
});

test('backoff is full jitter: uniform below min(cap, base * 2^attempt)', () => {
  assert.equal(backoffDelay(0, 1000, 30000, () => 0), 0);
  assert.equal(backoffDelay(3, 1000, 30000, () => 0.5), 4000);
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30000, 1000 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 1000, 30000);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} not in [0, ${ceiling})`);
    }
    assert.ok(backoffDelay(attempt, 1000, 30000, () => 0.999999) <= ceiling);
  }
  // Jitter spreads the retries: many samples of one attempt are not all alike.
  const samples = new Set(Array.from({ length: 50 }, () => backoffDelay(5, 1000, 30000)));
  assert.ok(samples.size > 40);
});

test('the HTTP base follows the WebSocket URL', () => {
  assert.equal(httpBase('ws://h:8080/ws'), 'http://h:8080');
  assert.equal(httpBase('wss://push.example.com/mps/ws'), 'https://push.example.com/mps');
  assert.equal(httpBase('ws://h/websocket/abc'), 'http://h');
});

test('recent ids are bounded and forget the oldest first', () => {
  const r = new RecentIds(3);
  assert.ok(r.add('1') && r.add('2') && r.add('3'));
  assert.equal(r.add('2'), false);
  assert.ok(r.add('4')); // evicts '1'
  assert.equal(r.set.size, 3);
  assert.ok(r.add('1'));
});

test('the open frame is the protocol Type 1 with topics, components and agent', async () => {
  const c = client({ topics: ['alarms/#'], components: ['esbm'], device: 'pc-17', user: 'admin' });
  const events = record(c);
  await until(() => FakeWebSocket.last, 1000, 'socket');
  const ws = FakeWebSocket.last;
  assert.equal(ws.url, URL_WS);
  ws.accept();
  assert.deepEqual(ws.sent[0], {
    Type: 1, Seq: ws.sent[0].Seq, Version: 1,
    Client: { agent: 'bs', way: 'websocket', user: 'admin', device: 'pc-17', componentSet: ['esbm'], topics: ['alarms/#'] },
    Security: { token: TOKEN },
  });
  ws.session();
  assert.equal(events.of('open')[0].transport, 'websocket');
  assert.equal(events.of('open')[0].session.id, '1');
  assert.equal(c.connected, true);
  c.close();
});

test('a token function is called on every connect', async () => {
  let n = 0;
  const c = client({ token: async () => `t${++n}` });
  const ws1 = await openSocket(1);
  assert.equal(ws1.sent[0].Security.token, 't1');
  ws1.drop();
  const ws2 = await openSocket(2);
  assert.equal(ws2.sent[0].Security.token, 't2');
  c.close();
});

test('a reconnect resumes from the greatest id seen, and duplicates are dropped', async () => {
  const c = client({ topics: ['alarms/#'] });
  const events = record(c);
  const ws1 = await openSocket(1);
  assert.equal(ws1.sent[0].Client.lastId, undefined);
  ws1.push(msg('9007199254740993', { topic: 'alarms/a' }));
  ws1.push(msg('10', { topic: 'alarms/a' })); // smaller (e.g. an old directed one): not the resume point
  ws1.push(msg('9007199254740993', { topic: 'alarms/a' })); // duplicate
  assert.equal(c.lastId, '9007199254740993');
  ws1.drop(1001, 'going away');
  const ws2 = await openSocket(2);
  assert.equal(ws2.sent[0].Client.lastId, '9007199254740993');
  ws2.push(msg('9007199254740993', { topic: 'alarms/a' })); // resent at the seam: dropped
  ws2.push(msg('9007199254740994', { topic: 'alarms/a' }));
  assert.deepEqual(events.of('message').map((m) => m.id), ['9007199254740993', '10', '9007199254740994']);
  assert.deepEqual(events.of('close').map((e) => [e.transport, e.code, e.opened]), [['websocket', 1001, true]]);
  c.close();
});

test('dedup memory is bounded: an id older than the window is delivered again', async () => {
  const c = client({ dedupSize: 2 });
  const events = record(c);
  const ws = await openSocket(1);
  for (const id of ['1', '2', '3', '1', '3']) ws.push(msg(id));
  assert.deepEqual(events.of('message').map((m) => m.id), ['1', '2', '3', '1']);
  c.close();
});

test('directed messages are acknowledged with one Type 4 per burst on WebSocket', async () => {
  const c = client();
  const ws = await openSocket(1);
  ws.push(msg('1', { ack: true }));
  ws.push(msg('2')); // broadcast: no ack
  ws.push(msg('3', { ack: true }));
  ws.push(msg('1', { ack: true })); // a duplicate is acknowledged again (its first ack may be lost)
  await tick(10);
  const acks = ws.sent.filter((f) => f.Type === 4);
  assert.equal(acks.length, 1);
  assert.deepEqual(acks[0].Ids, ['1', '3', '1']);
  assert.equal(typeof acks[0].Seq, 'number');
  c.close();
});

test('autoAck: false leaves acknowledging to the page', async () => {
  const c = client({ autoAck: false });
  const ws = await openSocket(1);
  ws.push(msg('1', { ack: true }));
  await tick(10);
  assert.equal(ws.sent.filter((f) => f.Type === 4).length, 0);
  c.ack('1');
  await tick(10);
  assert.deepEqual(ws.sent.filter((f) => f.Type === 4)[0].Ids, ['1']);
  c.close();
});

test('on SSE, acks go to POST /api/v1/ack with the token', async () => {
  const fetch = fakeFetch((url) => (url.endsWith('/api/v1/ack') ? { status: 200, body: { acked: 1 } } : new Promise(() => {})));
  const c = client({ transports: ['sse'], fetch, httpUrl: 'http://api.test/' });
  await until(() => FakeEventSource.last, 1000, 'event source');
  FakeEventSource.last.accept();
  FakeEventSource.last.push(msg('77', { ack: true }));
  await until(() => fetch.calls.length === 1, 1000, 'ack');
  const { url, init } = fetch.calls[0];
  assert.equal(url, 'http://api.test/api/v1/ack');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.authorization, `Bearer ${TOKEN}`);
  assert.equal(init.headers['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(init.body), { ids: ['77'] });
  c.close();
});

test('a failed HTTP ack is reported as an error with its ids', async () => {
  const fetch = fakeFetch((url) => (url.includes('/api/v1/ack') ? { status: 503, body: {} } : new Promise(() => {})));
  const c = client({ transports: ['sse'], fetch });
  const events = record(c);
  await until(() => FakeEventSource.last, 1000, 'event source');
  FakeEventSource.last.accept();
  FakeEventSource.last.push(msg('5', { ack: true }));
  await until(() => events.of('error').length, 1000, 'error');
  assert.equal(events.of('error')[0].code, 'ack_failed');
  assert.deepEqual(events.of('error')[0].ids, ['5']);
  c.close();
});

test('falls back WebSocket -> SSE -> polling after two failures each, resuming everywhere', async () => {
  const polls = [];
  const fetch = fakeFetch((url) => {
    polls.push(url);
    return polls.length === 1
      ? { status: 200, body: [msg('300', { topic: 't/x' })] }
      : new Promise(() => {}); // the next long poll waits
  });
  const c = client({ topics: ['t/#'], components: ['esbm'], fetch, lastId: '100' });
  const events = record(c);
  // WebSocket: once refused, once blocked by a throwing constructor.
  await until(() => FakeWebSocket.instances.length === 1, 1000, 'socket 1');
  FakeWebSocket.last.refuse();
  FakeWebSocket.throwOnCreate = new Error('blocked');
  await until(() => FakeEventSource.instances.length === 1, 1000, 'event source 1');
  assert.deepEqual(events.of('transport'), [{ from: 'websocket', to: 'sse' }]);
  assert.equal(FakeWebSocket.instances.length, 1);
  // SSE resumes from the id given to connect.
  const u = new URL(FakeEventSource.last.url);
  assert.equal(u.origin + u.pathname, 'http://push.test:8080/sse');
  assert.equal(u.searchParams.get('token'), TOKEN);
  assert.equal(u.searchParams.get('topics'), 't/#');
  assert.equal(u.searchParams.get('components'), 'esbm');
  assert.equal(u.searchParams.get('last_id'), '100');
  FakeEventSource.last.fail();
  await until(() => FakeEventSource.instances.length === 2, 1000, 'event source 2');
  FakeEventSource.last.fail();
  await until(() => polls.length === 2, 1000, 'two polls');
  assert.deepEqual(events.of('transport'), [{ from: 'websocket', to: 'sse' }, { from: 'sse', to: 'poll' }]);
  const p1 = new URL(polls[0]);
  assert.equal(p1.pathname, '/poll');
  assert.equal(p1.searchParams.get('since'), '100');
  assert.equal(p1.searchParams.get('timeout'), '0'); // a short poll first: open at once
  assert.equal(new URL(polls[1]).searchParams.get('timeout'), '25');
  assert.equal(p1.searchParams.get('token'), TOKEN);
  assert.equal(p1.searchParams.get('topics'), 't/#');
  assert.equal(new URL(polls[1]).searchParams.get('since'), '300'); // the greatest id received
  assert.deepEqual(events.of('message').map((m) => m.id), ['300']);
  assert.equal(events.of('open')[0].transport, 'poll');
  assert.equal(c.transport, 'poll');
  c.close();
});

test('a transport that once opened is not abandoned when it drops', async () => {
  const c = client();
  const events = record(c);
  const ws = await openSocket(1);
  ws.drop();
  for (let i = 2; i <= 4; i++) {
    await until(() => FakeWebSocket.instances.length === i, 1000, `socket ${i}`);
    FakeWebSocket.last.refuse();
  }
  await openSocket(5);
  assert.equal(FakeEventSource.instances.length, 0);
  assert.deepEqual(events.of('transport'), []);
  c.close();
});

test('SSE resumes from the greatest id with last_id, and reports named reset events', async () => {
  const c = client({ transports: ['sse'], topics: ['a/+/b'] });
  const events = record(c);
  await until(() => FakeEventSource.last, 1000, 'event source');
  const es = FakeEventSource.last;
  assert.equal(new URL(es.url).searchParams.get('last_id'), null);
  es.accept();
  es.push(msg('41'));
  es.push(msg('42'));
  es.named('reset', { Type: 10, Topics: ['a/+/b'], Error: { code: 'history_truncated', message: 'cut' } });
  es.fail();
  assert.ok(es.closed, 'the SDK closes the failed EventSource itself');
  await until(() => FakeEventSource.instances.length === 2, 1000, 'second event source');
  const u = new URL(FakeEventSource.last.url);
  assert.equal(u.searchParams.get('last_id'), '42');
  assert.equal(u.searchParams.get('topics'), 'a/+/b');
  assert.deepEqual(events.of('reset'), [{ topics: ['a/+/b'], error: { code: 'history_truncated', message: 'cut' } }]);
  c.close();
});

test('WebSocket resets (Type 10) and errors (Type 9) are reported', async () => {
  const c = client();
  const events = record(c);
  const ws = await openSocket(1);
  ws.frame({ Type: 10, Topics: ['alarms/#'], Error: { code: 'history_truncated', message: 'cut' } });
  ws.frame({ Type: 9, Seq: 3, Error: { code: 'unknown_type', message: 'x' } });
  assert.deepEqual(events.of('reset'), [{ topics: ['alarms/#'], error: { code: 'history_truncated', message: 'cut' } }]);
  assert.deepEqual(events.of('error'), [{ code: 'unknown_type', message: 'x' }]);
  c.close();
});

test('polling reports MPS-Reset and refuses for good on 401', async () => {
  let n = 0;
  const fetch = fakeFetch(() => (++n === 1
    ? { status: 200, body: [], headers: { 'MPS-Reset': 'a/#, b/#' } }
    : { status: 401, body: { error: { code: 'token_expired', message: 'expired' } } }));
  const c = client({ transports: ['poll'], fetch });
  const events = record(c);
  await until(() => events.of('error').length, 1000, 'refusal');
  assert.deepEqual(events.of('reset')[0].topics, ['a/#', 'b/#']);
  assert.equal(events.of('error')[0].code, 'token_expired');
  await tick(30);
  assert.equal(n, 2, 'no retry after a final refusal');
  c.close();
});

test('polling never spins on answers that bring only repeats', async () => {
  let n = 0;
  const fetch = fakeFetch(() => { n++; return { status: 200, body: [msg('7')] }; }); // always at once
  const c = client({ transports: ['poll'], fetch, backoffBase: 50, backoffCap: 200, random: () => 0.999 });
  const events = record(c);
  await tick(400);
  assert.equal(events.of('message').length, 1);
  assert.ok(n >= 3 && n <= 8, `${n} polls in 400 ms`); // waits of 49, 99, 199, 199... ms
  c.close();
});

test('an open refused by the server is final with a fixed token', async () => {
  const c = client();
  const events = record(c);
  await until(() => FakeWebSocket.last, 1000, 'socket');
  const ws = FakeWebSocket.last;
  ws.accept();
  ws.frame({ Type: 2, Seq: ws.sent[0].Seq, Error: { code: 'invalid_token', message: 'bad signature' } });
  ws.drop(4401, 'invalid_token');
  await tick(30);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(FakeEventSource.instances.length, 0, 'a refusal is not a transport failure');
  assert.deepEqual(events.of('error'), [{ code: 'invalid_token', message: 'bad signature' }]);
});

test('heartbeat: Type 5 pings on WebSocket, and silence past the timeout reconnects', async () => {
  const c = client({ heartbeat: 0.02, timeout: 0.08 });
  const events = record(c);
  const ws = await openSocket(1);
  await until(() => ws.sent.filter((f) => f.Type === 5).length >= 2, 1000, 'pings');
  const pings = ws.sent.filter((f) => f.Type === 5);
  assert.ok(pings[1].Seq > pings[0].Seq);
  // Pongs keep it alive past the timeout...
  for (let i = 0; i < 6; i++) { await tick(20); ws.frame({ Type: 6, Seq: 1 }); }
  assert.equal(FakeWebSocket.instances.length, 1);
  // ...silence does not.
  await until(() => FakeWebSocket.instances.length === 2, 1000, 'reconnect after silence');
  assert.equal(ws.closedWith, 1000);
  assert.equal(events.of('close')[0].code, 4408);
  c.close();
});

test('no answer to the open frame within openTimeout counts as a failure', async () => {
  const c = client({ openTimeout: 0.02 });
  const events = record(c);
  await until(() => FakeWebSocket.instances.length === 1, 1000, 'socket');
  FakeWebSocket.last.accept(); // open, but the server never answers Type 2
  await until(() => FakeWebSocket.instances.length === 2, 1000, 'second socket');
  FakeWebSocket.last.accept();
  await until(() => events.of('transport').length === 1, 1000, 'fallback');
  assert.deepEqual(events.of('transport')[0], { from: 'websocket', to: 'sse' });
  c.close();
});

test('kicked by an operator (4403): waits the full cap before coming back', async () => {
  const c = client({ backoffCap: 150 });
  const ws = await openSocket(1);
  const t0 = Date.now();
  ws.drop(4403, 'disconnected');
  await until(() => FakeWebSocket.instances.length === 2, 2000, 'reconnect');
  assert.ok(Date.now() - t0 >= 140, `came back after ${Date.now() - t0} ms`);
  c.close();
});

test('subscribe: Type 8 on WebSocket; SSE reconnects with the new query', async () => {
  const c = client({ topics: ['a/#'] });
  const ws = await openSocket(1);
  c.subscribe({ topics: ['b/#'], components: ['oa'] });
  assert.deepEqual(ws.sent.at(-1).Client, { componentSet: ['oa'], topics: ['b/#'] });
  assert.equal(ws.sent.at(-1).Type, 8);
  c.close();

  const s = client({ transports: ['sse'], topics: ['a/#'] });
  await until(() => FakeEventSource.instances.length === 1, 1000, 'event source');
  FakeEventSource.last.accept();
  s.subscribe({ topics: ['c/#'] });
  await until(() => FakeEventSource.instances.length === 2, 1000, 'new event source');
  assert.ok(FakeEventSource.instances[0].closed);
  assert.equal(new URL(FakeEventSource.last.url).searchParams.get('topics'), 'c/#');
  s.close();
});

test('close() stops for good: no reconnect, no more messages', async () => {
  const c = client();
  const events = record(c);
  const ws = await openSocket(1);
  c.close();
  assert.equal(ws.closedWith, 1000);
  ws.push(msg('1'));
  ws.drop();
  await tick(30);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(events.of('message').length, 0);
  assert.equal(events.of('close').length, 1);
  assert.equal(c.connected, false);
});

test('a throwing listener does not stop delivery to the others', async () => {
  const c = client();
  const got = [];
  c.on('message', () => { throw new Error('page bug'); });
  c.on('message', (m) => got.push(m.id));
  const uncaught = [];
  globalThis.reportError = (e) => uncaught.push(e); // as browsers have it
  const ws = await openSocket(1);
  ws.push(msg('1'));
  delete globalThis.reportError;
  assert.deepEqual(got, ['1']);
  assert.equal(uncaught.length, 1);
  c.close();
});

// ---- Web Push: subscribePush / unsubscribePush with a stubbed browser -----------------------

const VAPID = 'BEl62iUYgUivxIkv69yViEuiBIa-Ib9-SkvMeAtA3LFgDzkrxZJjSgSnfckjBJuBkr3qBUYIHBQFLXYp5Nksh8U';

/** A PushSubscription as the browser gives it. */
class FakeSubscription {
  constructor(key, endpoint = 'https://push.example.net/s/1') {
    this.options = { applicationServerKey: key ? key.buffer : null };
    this.endpoint = endpoint;
    this.unsubscribed = false;
  }
  toJSON() { return { endpoint: this.endpoint, expirationTime: null, keys: { p256dh: 'BNc', auth: 'tBH' } }; }
  async unsubscribe() { this.unsubscribed = true; return true; }
}

/** navigator.serviceWorker and a PushManager that record what the SDK asks. */
function fakeBrowser(existing = null) {
  const calls = { register: [], subscribe: [] };
  const pushManager = {
    current: existing,
    async getSubscription() { return this.current; },
    async subscribe(opts) {
      calls.subscribe.push(opts);
      this.current = new FakeSubscription(opts.applicationServerKey, 'https://push.example.net/s/new');
      return this.current;
    },
  };
  const registration = { pushManager };
  const navigator = {
    serviceWorker: {
      async register(script, opts) { calls.register.push([script, opts]); return registration; },
      ready: Promise.resolve(registration),
    },
  };
  return { navigator, PushManager: function PushManager() {}, calls, pushManager };
}

/** A fetch playing mps: the VAPID key route and /api/v1/devices. */
function mpsFetch({ key = VAPID, devices = { status: 201 } } = {}) {
  return fakeFetch((url, init) => {
    if (url.includes('/api/v1/webpush/vapid-public-key')) {
      return key ? { status: 200, body: { app: 'default', key } }
        : { status: 404, body: { error: { code: 'not_configured', message: 'no Web Push' } } };
    }
    if (url.includes('/api/v1/devices')) {
      const sent = init.body ? JSON.parse(init.body) : null;
      return { status: devices.status, body: devices.body || { user: 'alice', way: 'webpush', device: sent && sent.device } };
    }
    return { status: 500, body: null };
  });
}

function memoryStorage() {
  const map = new Map();
  return { getItem: (k) => (map.has(k) ? map.get(k) : null), setItem: (k, v) => map.set(k, String(v)) };
}

test('base64url keys decode to their bytes', () => {
  const bytes = base64UrlBytes(VAPID);
  assert.equal(bytes.length, 65);
  assert.equal(bytes[0], 4);
  assert.deepEqual([...base64UrlBytes('-_8')], [0xfb, 0xff]);
});

test('deviceId is made once and kept in storage', () => {
  const storage = memoryStorage();
  const first = deviceId(storage);
  assert.match(first, /^bs-/);
  assert.equal(deviceId(storage), first);
  assert.notEqual(deviceId(memoryStorage()), first);
});

test('subscribePush: service worker, PushManager.subscribe with the VAPID key, then POST /api/v1/devices', async () => {
  const browser = fakeBrowser();
  const fetch = mpsFetch();
  const { registration, subscription } = await subscribePush({
    url: URL_WS, token: async () => TOKEN, device: 'laptop-1', serviceWorker: '/sw.js', scope: '/',
    components: ['esbm'], navigator: browser.navigator, PushManager: browser.PushManager, fetch,
  });
  assert.deepEqual(browser.calls.register, [['/sw.js', { scope: '/' }]]);
  assert.equal(browser.calls.subscribe.length, 1);
  const opts = browser.calls.subscribe[0];
  assert.equal(opts.userVisibleOnly, true);
  assert.deepEqual([...opts.applicationServerKey], [...base64UrlBytes(VAPID)]);
  assert.equal(fetch.calls[0].url, 'http://push.test:8080/api/v1/webpush/vapid-public-key');
  const post = fetch.calls[1];
  assert.equal(post.url, 'http://push.test:8080/api/v1/devices');
  assert.equal(post.init.method, 'POST');
  assert.equal(post.init.headers.authorization, `Bearer ${TOKEN}`);
  assert.deepEqual(JSON.parse(post.init.body), {
    device: 'laptop-1', way: 'webpush', components: ['esbm'],
    subscription: { endpoint: 'https://push.example.net/s/new', expirationTime: null, keys: { p256dh: 'BNc', auth: 'tBH' } },
  });
  assert.equal(registration.device, 'laptop-1');
  assert.equal(subscription, browser.pushManager.current);
});

test('subscribePush keeps a subscription made with the same key and replaces one made with another', async () => {
  const same = new FakeSubscription(base64UrlBytes(VAPID), 'https://push.example.net/s/kept');
  let browser = fakeBrowser(same);
  await subscribePush({ httpUrl: 'https://mps.test', token: TOKEN, device: 'd', navigator: browser.navigator, PushManager: browser.PushManager, fetch: mpsFetch() });
  assert.equal(browser.calls.subscribe.length, 0);
  assert.equal(same.unsubscribed, false);

  const stale = new FakeSubscription(new Uint8Array([4, 1, 2]), 'https://push.example.net/s/stale');
  browser = fakeBrowser(stale);
  const fetch = mpsFetch();
  await subscribePush({ httpUrl: 'https://mps.test/', token: TOKEN, device: 'd', navigator: browser.navigator, PushManager: browser.PushManager, fetch });
  assert.equal(stale.unsubscribed, true);
  assert.equal(browser.calls.subscribe.length, 1);
  assert.equal(JSON.parse(fetch.calls[1].init.body).subscription.endpoint, 'https://push.example.net/s/new');
  assert.equal(fetch.calls[1].url, 'https://mps.test/api/v1/devices');
});

test('subscribePush reports the server\'s refusals and unsupported browsers by code', async () => {
  const browser = fakeBrowser();
  const base = { httpUrl: 'https://mps.test', token: TOKEN, device: 'd', navigator: browser.navigator, PushManager: browser.PushManager };
  await assert.rejects(subscribePush({ ...base, fetch: mpsFetch({ key: null }) }), { code: 'not_configured' });
  assert.equal(browser.calls.subscribe.length, 0, 'no subscription without a key');
  const refused = mpsFetch({ devices: { status: 400, body: { error: { code: 'invalid_subscription', message: 'bad' } } } });
  await assert.rejects(subscribePush({ ...base, fetch: refused }), { code: 'invalid_subscription' });
  await assert.rejects(subscribePush({ ...base, navigator: {}, fetch: mpsFetch() }), { code: 'unsupported' });
  await assert.rejects(subscribePush({ ...base, PushManager: undefined, fetch: mpsFetch() }), { code: 'unsupported' });
});

test('subscribePush uses the ready service worker and a stored device id by default', async () => {
  const browser = fakeBrowser();
  const storage = memoryStorage();
  const fetch = mpsFetch();
  await subscribePush({ httpUrl: 'https://mps.test', token: TOKEN, storage, app: 'oa', navigator: browser.navigator, PushManager: browser.PushManager, fetch });
  assert.equal(browser.calls.register.length, 0);
  assert.equal(fetch.calls[0].url, 'https://mps.test/api/v1/webpush/vapid-public-key?app=oa');
  assert.equal(JSON.parse(fetch.calls[1].init.body).device, deviceId(storage));
});

test('unsubscribePush unsubscribes and closes the push mode; false when it was off', async () => {
  const current = new FakeSubscription(base64UrlBytes(VAPID));
  const browser = fakeBrowser(current);
  let fetch = mpsFetch({ devices: { status: 200, body: { removed: 1 } } });
  const base = { httpUrl: 'https://mps.test', token: TOKEN, device: 'laptop 1', navigator: browser.navigator, PushManager: browser.PushManager };
  assert.equal(await unsubscribePush({ ...base, fetch }), true);
  assert.equal(current.unsubscribed, true);
  assert.equal(fetch.calls[0].url, 'https://mps.test/api/v1/devices?device=laptop%201&way=webpush');
  assert.equal(fetch.calls[0].init.method, 'DELETE');
  assert.equal(fetch.calls[0].init.headers.authorization, `Bearer ${TOKEN}`);
  fetch = mpsFetch({ devices: { status: 404, body: { error: { code: 'not_found', message: 'no' } } } });
  assert.equal(await unsubscribePush({ ...base, fetch }), false);
});
