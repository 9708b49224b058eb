// mps.js: the browser SDK of mps, the message push service. One ES module, no dependencies.
//
//   import { connect } from '/sdk/mps.js';
//   const push = connect({ url: 'wss://push.example.com/ws', token, topics: ['alarms/#'] });
//   push.on('message', (m) => console.log(m.title, m.EventData.ext));
//   await subscribePush({ token, serviceWorker: '/sw.js', device: deviceId() }); // Web Push
//
// What it does for the page (docs/sdk.md has the details):
// - opens a WebSocket with the protocol's open frame (docs/protocol.md, Type 1), falling back to
//   Server-Sent Events (GET /sse) and then to long polling (GET /poll) when a transport cannot
//   be opened at all (`fallbackAfter` consecutive failures without ever opening);
// - reconnects with exponential backoff and full jitter, resuming topics from the greatest
//   message id seen (Client.lastId, last_id, since);
// - drops duplicates by id (the last `dedupSize` ids), acknowledges directed messages
//   (`ack: true`), and on WebSocket sends pings and treats a silent connection as dead;
// - subscribePush()/unsubscribePush() turn Web Push on and off for the browser (service worker,
//   PushManager with the server's VAPID key, POST/DELETE /api/v1/devices).

const DEFAULTS = {
  transports: ['websocket', 'sse', 'poll'],
  agent: 'bs',
  backoffBase: 1000, // ms: the first retry waits up to this long...
  backoffCap: 30000, // ms: ...and no retry waits longer than this
  fallbackAfter: 2, // failures in a row, without ever opening, before trying the next transport
  heartbeat: 25, // s between Type 5 pings on WebSocket (the server's Session.heartbeat if lower)
  timeout: 60, // s of silence after which a WebSocket is taken for dead
  openTimeout: 10, // s to wait for the server's Type 2 answer (or SSE's open, or a poll answer)
  pollTimeout: 25, // s a long poll may wait on the server
  dedupSize: 1000,
  autoAck: true,
};

// Token errors that a new token may cure; other refusals are final (fix the client).
const TOKEN_ERRORS = new Set(['missing_token', 'invalid_token', 'token_expired']);

/** Compare two decimal id strings: -1, 0 or 1. Ids exceed 2^53, so never go through Number. */
export function compareIds(a, b) {
  a = String(a).replace(/^0+(?=\d)/, '');
  b = String(b).replace(/^0+(?=\d)/, '');
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Full-jitter exponential backoff: a uniform delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

/** The HTTP base (scheme, host, path prefix) of a WebSocket URL: wss://h/p/ws -> https://h/p */
export function httpBase(wsUrl) {
  const u = new URL(wsUrl);
  const scheme = { 'ws:': 'http:', 'wss:': 'https:' }[u.protocol] || u.protocol;
  const path = u.pathname.replace(/\/(ws|websocket)(\/.*)?$/, '').replace(/\/$/, '');
  return `${scheme}//${u.host}${path}`;
}

/** Remembers the last `size` ids seen: bounded memory, O(1) checks. */
export class RecentIds {
  constructor(size) {
    this.size = size;
    this.set = new Set();
    this.order = [];
  }
  /** True when `id` was not seen before (and remembers it). */
  add(id) {
    if (this.set.has(id)) return false;
    this.set.add(id);
    this.order.push(id);
    if (this.order.length > this.size) this.set.delete(this.order.shift());
    return true;
  }
}

/**
 * Connect to mps. Returns a client at once; it connects (and reconnects) in the background.
 * Options: url, httpUrl, token (string, or function returning one or a promise of one), topics,
 * components, agent, device, user, lastId, transports and the tunables in DEFAULTS; WebSocket,
 * EventSource, fetch and random may be injected (tests, non-browser hosts).
 */
export function connect(options = {}) {
  const o = { ...DEFAULTS, ...options };
  if (!o.url && globalThis.location) {
    o.url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  }
  if (!o.url) throw new TypeError('mps: connect needs a url');
  const http = (o.httpUrl || httpBase(o.url)).replace(/\/$/, '');
  const random = o.random || Math.random;
  const ctors = {
    websocket: () => o.WebSocket || globalThis.WebSocket,
    sse: () => o.EventSource || globalThis.EventSource,
    poll: () => o.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis)),
  };
  const transports = o.transports.filter((t) => ctors[t] && ctors[t]());
  if (!transports.length) throw new TypeError('mps: none of the transports is available here');

  const listeners = {};
  const seen = new RecentIds(o.dedupSize);
  const everOpened = {}; // transport -> true once it has opened in this client's life
  let lastId = o.lastId || null; // greatest id seen: where topics resume
  let index = 0; // the transport in use, in `transports`
  let failures = 0; // of the transport in use, in a row, without opening
  let attempt = 0; // backoff exponent: connection attempts since the last open
  let generation = 0; // bumps on every (re)connect, so late callbacks of old ones are ignored
  let current = null; // the live transport: { kind, ack(ids), subscribe(), stop() }
  let retryTimer = null;
  let ackQueue = [];
  let ackTimer = null;
  let closed = false;
  let seq = 0;
  let isOpen = false; // the current connection has opened

  // Report a listener's exception like an uncaught one, without stopping the caller.
  const report = (e) => (globalThis.reportError ? globalThis.reportError(e) : setTimeout(() => { throw e; }));

  function emit(event, value) {
    for (const fn of listeners[event] || []) {
      try { fn(value); } catch (e) { report(e); } // a bad listener must not stop delivery
    }
  }

  const token = async () => (typeof o.token === 'function' ? o.token() : o.token);
  const list = (xs) => (xs && xs.length ? xs.join(',') : null);
  function query(params) {
    const q = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== '');
    return q.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
  }

  // ---- what every transport reports to ----------------------------------------------------

  /** Hands a message to the page unless it is a repeat; true when it was new. */
  function deliver(message) {
    if (!message || typeof message.id !== 'string') return false;
    if (!lastId || compareIds(message.id, lastId) > 0) lastId = message.id;
    // Acknowledge even a duplicate: the first ack may have been lost with the connection.
    if (message.ack && o.autoAck) queueAck(message.id);
    if (!seen.add(message.id)) return false; // a duplicate after a reconnect
    emit('message', message);
    return true;
  }

  function queueAck(id) {
    ackQueue.push(id);
    if (!ackTimer) ackTimer = setTimeout(flushAcks, 0); // one ack for a burst of messages
  }

  function flushAcks() {
    ackTimer = null;
    while (ackQueue.length) {
      const ids = ackQueue.splice(0, 1000); // the protocol's limit per ack
      if (!(current && current.ack(ids))) ackOverHttp(ids);
    }
  }

  async function ackOverHttp(ids) {
    try {
      if (!ctors.poll()) throw new Error('no fetch to acknowledge with');
      const res = await ctors.poll()(`${http}/api/v1/ack`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${await token()}` },
        body: JSON.stringify({ ids }),
      });
      if (!res.ok) throw new Error(`ack answered HTTP ${res.status}`);
    } catch (e) {
      emit('error', { code: 'ack_failed', message: String(e && e.message || e), ids });
    }
  }

  // Each transport gets its own reporter, bound to its generation, so an old connection
  // closing late cannot disturb the new one.
  function reporter(kind) {
    const gen = ++generation;
    const live = () => gen === generation && !closed;
    let opened = false;
    return {
      live,
      opened(session) {
        if (!live()) return;
        opened = true;
        isOpen = true;
        everOpened[kind] = true;
        failures = 0;
        attempt = 0;
        emit('open', { transport: kind, session: session || null });
      },
      message: (m) => live() && deliver(m),
      reset: (info) => live() && emit('reset', info),
      error: (info) => live() && emit('error', info),
      // The connection is over: decide when and how to reconnect.
      down(info = {}) {
        if (!live()) return;
        generation++; // this connection is finished; ignore anything else it says
        current = null;
        isOpen = false;
        emit('close', { transport: kind, code: info.code, reason: info.reason || '', opened });
        if (info.refused && !(TOKEN_ERRORS.has(info.refused.code) && typeof o.token === 'function')) {
          closed = true; // refused for good: a retry would be refused again
          emit('error', info.refused);
          return;
        }
        if (!opened && !info.refused && ++failures >= o.fallbackAfter && !everOpened[kind]) {
          const from = kind;
          index = (index + 1) % transports.length;
          failures = 0;
          if (transports[index] !== from) emit('transport', { from, to: transports[index] });
        }
        // 4403: an operator disconnected us; do not come straight back.
        const delay = info.code === 4403 ? o.backoffCap : backoffDelay(attempt++, o.backoffBase, o.backoffCap, random);
        retryTimer = setTimeout(start, delay);
      },
    };
  }

  // ---- transports ---------------------------------------------------------------------------

  // WebSocket: the full protocol on one socket (docs/protocol.md).
  function webSocket(tok, r) {
    let ws;
    let heartbeat = null;
    let silence = null;
    let refused = null;
    let timeoutS = o.timeout;
    try {
      ws = new (ctors.websocket())(o.url);
    } catch (e) {
      setTimeout(() => r.down({ reason: String(e && e.message || e) })); // blocked or bad url
      return { kind: 'websocket', ack: () => false, subscribe() {}, stop() {} };
    }
    const send = (frame) => ws.readyState === 1 && (ws.send(JSON.stringify(frame)), true);
    // Anything heard is a sign of life; silence past the timeout means a dead peer.
    const alive = () => {
      clearTimeout(silence);
      silence = setTimeout(() => finish({ code: 4408, reason: 'no answer from the server' }), timeoutS * 1000);
    };
    const finish = (info) => {
      clearInterval(heartbeat);
      clearTimeout(silence);
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch (e) { /* already closing */ }
      r.down({ ...info, refused });
    };
    silence = setTimeout(() => finish({ code: 4408, reason: 'no open answer' }), o.openTimeout * 1000);
    ws.onopen = () => {
      const client = { agent: o.agent, way: 'websocket' };
      if (o.user) client.user = o.user;
      if (o.device) client.device = o.device;
      if (o.components && o.components.length) client.componentSet = o.components;
      if (o.topics && o.topics.length) client.topics = o.topics;
      if (lastId) client.lastId = lastId;
      send({ Type: 1, Seq: ++seq, Version: 1, Client: client, Security: { token: tok } });
    };
    ws.onmessage = (evt) => {
      let f;
      try { f = JSON.parse(evt.data); } catch (e) { return r.error({ code: 'bad_json', message: 'unreadable frame' }); }
      alive(); // any frame is a sign of life
      switch (f.Type) {
        case 2:
          if (f.Error) { refused = f.Error; return; } // the server closes next
          // Unless the page chose, silence is judged by the server's own timeout.
          timeoutS = options.timeout || (f.Session && f.Session.timeout) || o.timeout;
          heartbeat = setInterval(() => send({ Type: 5, Seq: ++seq }),
            Math.min(o.heartbeat, (f.Session && f.Session.heartbeat) || o.heartbeat) * 1000);
          alive();
          r.opened(f.Session);
          return flushAcks(); // acks queued while reconnecting go out now
        case 3: return r.message(f.Message);
        case 9: return r.error(f.Error);
        case 10: return r.reset({ topics: f.Topics || [], error: f.Error });
        default: return undefined; // 4 ack answers, 6 pongs, 8 subscription answers
      }
    };
    ws.onclose = (evt) => finish({ code: evt.code, reason: evt.reason });
    ws.onerror = () => {}; // onclose follows with the code
    return {
      kind: 'websocket',
      ack: (ids) => !!heartbeat && send({ Type: 4, Seq: ++seq, Ids: ids }),
      // Before the open frame is sent, that frame carries the new subscriptions instead.
      subscribe: () => { send({ Type: 8, Seq: ++seq, Client: { componentSet: o.components || [], topics: o.topics || [] } }); return true; },
      stop() {
        clearInterval(heartbeat);
        clearTimeout(silence);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch (e) { /* already closing */ }
      },
    };
  }

  // Server-Sent Events: the same push frames, one per event; acks go over HTTP.
  function serverSentEvents(tok, r) {
    const url = `${http}/sse?${query({
      token: tok, topics: list(o.topics), components: list(o.components),
      agent: o.agent, device: o.device, last_id: lastId,
    })}`;
    let es;
    try {
      es = new (ctors.sse())(url);
    } catch (e) {
      setTimeout(() => r.down({ reason: String(e && e.message || e) }));
      return { kind: 'sse', ack: () => false, subscribe() {}, stop() {} };
    }
    const opening = setTimeout(() => { stop(); r.down({ reason: 'no open answer' }); }, o.openTimeout * 1000);
    const stop = () => { clearTimeout(opening); es.onopen = es.onmessage = es.onerror = null; es.close(); };
    es.onopen = () => { clearTimeout(opening); r.opened(null); };
    es.onmessage = (evt) => {
      try { r.message(JSON.parse(evt.data).Message); } catch (e) { r.error({ code: 'bad_json', message: 'unreadable event' }); }
    };
    es.addEventListener('reset', (evt) => {
      try { const f = JSON.parse(evt.data); r.reset({ topics: f.Topics || [], error: f.Error }); } catch (e) { /* ignore */ }
    });
    // EventSource would reconnect by itself, but without our backoff, resume id or fallback.
    es.onerror = () => { stop(); r.down({ reason: 'event stream failed' }); };
    return { kind: 'sse', ack: () => false, subscribe: () => false, stop };
  }

  // Long polling: GET /poll in a loop, each answer a JSON array of messages.
  function longPoll(tok, r) {
    let controller = null;
    let guard = null; // aborts a poll the server left unanswered for too long
    let pause = null; // the wait after an answer of only repeats
    let repeats = 0; // answers in a row that brought nothing new
    let pollOpened = false;
    let stopped = false;
    async function loop() {
      while (!stopped && r.live()) {
        controller = typeof AbortController === 'function' ? new AbortController() : null;
        guard = setTimeout(() => controller && controller.abort(), (o.pollTimeout + o.openTimeout) * 1000);
        // The first request is a short poll, so the transport is known to work (open) at once.
        const url = `${http}/poll?${query({
          since: lastId, timeout: pollOpened ? o.pollTimeout : 0, token: tok, topics: list(o.topics),
          components: list(o.components), agent: o.agent, device: o.device,
        })}`;
        let res;
        let body;
        try {
          res = await ctors.poll()(url, controller ? { signal: controller.signal } : {});
          body = await res.json();
        } catch (e) {
          if (!stopped) r.down({ reason: String(e && e.message || e) });
          return;
        } finally {
          clearTimeout(guard);
        }
        if (stopped) return;
        if (!res.ok) {
          const err = body && body.error;
          // 400, 401, 403: this request will never be accepted; anything else may pass later.
          const final = [400, 401, 403].includes(res.status);
          return r.down({ code: res.status, reason: err ? err.message : `HTTP ${res.status}`, refused: final ? err || { code: `http_${res.status}`, message: `HTTP ${res.status}` } : undefined });
        }
        if (!pollOpened) { pollOpened = true; r.opened(null); }
        const reset = res.headers && res.headers.get && res.headers.get('MPS-Reset');
        if (reset) r.reset({ topics: reset.split(',').map((s) => s.trim()), error: { code: 'history_truncated', message: 'history was cut' } });
        const messages = Array.isArray(body) ? body : [];
        const fresh = messages.filter((m) => r.message(m)).length;
        // An answer of nothing but repeats came back at once: never poll in a tight loop.
        if (messages.length && !fresh) {
          await new Promise((resume) => { pause = setTimeout(resume, backoffDelay(repeats++, o.backoffBase, o.backoffCap, random)); });
        } else {
          repeats = 0;
        }
      }
    }
    loop();
    return { kind: 'poll', ack: () => false, subscribe: () => false, stop() { stopped = true; clearTimeout(guard); clearTimeout(pause); if (controller) controller.abort(); } };
  }

  const open = { websocket: webSocket, sse: serverSentEvents, poll: longPoll };

  // Drop the current connection quietly and open a new one now (not a failure).
  function restart() {
    generation++;
    if (current) current.stop();
    current = null;
    isOpen = false;
    clearTimeout(retryTimer);
    start();
  }

  async function start() {
    retryTimer = null;
    if (closed) return;
    const kind = transports[index];
    const r = reporter(kind);
    let tok;
    try {
      tok = await token();
    } catch (e) {
      emit('error', { code: 'token_failed', message: String(e && e.message || e) });
      return r.down({ reason: 'no token' });
    }
    if (!r.live()) return;
    current = open[kind](tok, r);
  }

  start();

  return {
    /** Listen: 'message', 'open', 'close', 'error', 'reset', 'transport'. Returns an unsubscribe. */
    on(event, fn) {
      (listeners[event] = listeners[event] || []).push(fn);
      return () => { listeners[event] = listeners[event].filter((f) => f !== fn); };
    },
    /** Replace the topic patterns and/or components (those given); from now on, no replay. */
    subscribe({ topics, components } = {}) {
      if (topics) o.topics = topics;
      if (components) o.components = components;
      // WebSocket changes them in place (Type 8); SSE and polling reconnect with the new query.
      if (current && !current.subscribe()) restart();
    },
    /** Acknowledge directed messages by id (only needed with autoAck: false). */
    ack(ids) { for (const id of [].concat(ids)) queueAck(id); },
    /** Stop for good: no more messages, no reconnect. */
    close() {
      if (closed) return;
      flushAcks();
      closed = true;
      clearTimeout(retryTimer);
      if (current) current.stop();
      current = null;
      isOpen = false;
      emit('close', { transport: transports[index], code: 1000, reason: 'closed by the page', opened: false });
    },
    get transport() { return transports[index]; },
    get lastId() { return lastId; },
    /** True while a connection is open (a WebSocket session, an event stream, a poll loop). */
    get connected() { return isOpen; },
  };
}

// ---- Web Push ---------------------------------------------------------------------------------

/** The bytes of a base64url string (a VAPID key), as `PushManager.subscribe` wants them. */
export function base64UrlBytes(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/**
 * A stable id for this browser, kept in `storage` (localStorage by default) under `mps.device`.
 * Give the same id to connect() (`device`) and subscribePush(), so that mps knows when this
 * browser is online and needs no Web Push.
 */
export function deviceId(storage = globalThis.localStorage) {
  const saved = storage && storage.getItem('mps.device');
  if (saved) return saved;
  const id = `bs-${globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(36).slice(2)}`;
  if (storage) storage.setItem('mps.device', id);
  return id;
}

/** An Error with the server's (or the SDK's) error code. */
function pushError(code, message) {
  return Object.assign(new Error(`mps: ${message}`), { code });
}

/** What subscribePush() and unsubscribePush() share: the HTTP base, token, device, fetch. */
function pushContext(o) {
  const nav = o.navigator || globalThis.navigator;
  if (!nav || !nav.serviceWorker || !(o.PushManager || globalThis.PushManager)) {
    throw pushError('unsupported', 'this browser has no service workers or Push API');
  }
  const base = o.httpUrl || (o.url ? httpBase(o.url) : globalThis.location && globalThis.location.origin);
  if (!base) throw new TypeError('mps: subscribePush needs httpUrl or url');
  const fetchFn = o.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
  if (!fetchFn) throw pushError('unsupported', 'no fetch');
  return {
    nav,
    http: base.replace(/\/$/, ''),
    fetch: fetchFn,
    device: o.device || deviceId(o.storage),
    token: async () => (typeof o.token === 'function' ? o.token() : o.token),
  };
}

/** The body of an answer, or an Error carrying the server's error code. */
async function answer(res) {
  let body = null;
  try { body = await res.json(); } catch (e) { /* no JSON body */ }
  if (res.ok) return body;
  const err = body && body.error;
  throw pushError(err ? err.code : `http_${res.status}`, err ? err.message : `HTTP ${res.status}`);
}

/** The service worker registration to push to: given, registered from a script, or the ready one. */
async function workerRegistration(o, nav) {
  if (o.registration) return o.registration;
  if (o.serviceWorker) return nav.serviceWorker.register(o.serviceWorker, o.scope ? { scope: o.scope } : undefined);
  return nav.serviceWorker.ready;
}

function sameKey(subscription, key) {
  const current = subscription.options && subscription.options.applicationServerKey;
  if (!current) return true; // the browser does not say: keep it
  const a = new Uint8Array(current);
  return a.length === key.length && a.every((b, i) => b === key[i]);
}

/**
 * Web Push for this browser: registers the service worker, subscribes with mps's VAPID key and
 * opens the `webpush` push mode (POST /api/v1/devices). Resolves to `{ registration,
 * subscription }`: the server's registration and the browser's PushSubscription. Options:
 * token (required), httpUrl or url, device (default deviceId()), serviceWorker (script URL) or
 * registration, scope, components, agent, app; navigator, PushManager, fetch, storage may be
 * injected.
 */
export async function subscribePush(options = {}) {
  const o = { ...options };
  const ctx = pushContext(o);
  const sw = await workerRegistration(o, ctx.nav);
  const app = o.app ? `?app=${encodeURIComponent(o.app)}` : '';
  const { key: vapid } = await answer(await ctx.fetch(`${ctx.http}/api/v1/webpush/vapid-public-key${app}`));
  const key = base64UrlBytes(vapid);
  let subscription = await sw.pushManager.getSubscription();
  if (subscription && !sameKey(subscription, key)) {
    await subscription.unsubscribe(); // made with an older key: the push service would refuse it
    subscription = null;
  }
  if (!subscription) {
    subscription = await sw.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  }
  const body = { device: ctx.device, way: 'webpush', subscription: subscription.toJSON() };
  if (o.agent) body.agent = o.agent;
  if (o.components) body.components = o.components;
  const registration = await answer(await ctx.fetch(`${ctx.http}/api/v1/devices`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${await ctx.token()}` },
    body: JSON.stringify(body),
  }));
  return { registration, subscription };
}

/**
 * Turns Web Push off for this browser: unsubscribes the service worker's PushSubscription and
 * closes the `webpush` push mode (DELETE /api/v1/devices). Resolves to true when a push mode
 * was on. Same options as subscribePush().
 */
export async function unsubscribePush(options = {}) {
  const o = { ...options };
  const ctx = pushContext(o);
  const sw = await workerRegistration(o, ctx.nav);
  const subscription = await sw.pushManager.getSubscription();
  if (subscription) await subscription.unsubscribe();
  const res = await ctx.fetch(`${ctx.http}/api/v1/devices?device=${encodeURIComponent(ctx.device)}&way=webpush`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${await ctx.token()}` },
  });
  if (res.status === 404) return false;
  await answer(res);
  return true;
}
