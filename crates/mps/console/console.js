// mps console: a page over the admin HTTP API (docs/api.md, docs/console.md). No dependencies,
// no build step. The admin key lives in sessionStorage (this tab only) and goes out as a Bearer
// header; everything shown is set as text, never parsed as HTML.

const KEY = 'mps.console.key';
// The page is served at <prefix>/console/, the API at <prefix>/api/v1/.
const API = new URL('../api/v1/', location.href);
const STATS_EVERY = 2000; // ms between stats samples
const SAMPLES = 90; // samples kept per chart (3 minutes)
const MAX_CLIENTS = 1000; // clients listed at once
const MAX_RECIPIENTS = 500; // recipients listed at once

const $ = (id) => document.getElementById(id);

/** An element with attributes (`class`, `title`, `data-*`...) and children (text or nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function chip(status, count) {
  return el('span', { class: `chip ${status}` }, count === undefined ? status : `${status} ${count}`);
}

const pad = (n) => String(n).padStart(2, '0');

/** Unix ms as local `YYYY-MM-DD HH:MM:SS`. */
function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtAgo(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function fmtRate(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  if (x >= 100) return Math.round(x).toLocaleString();
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2).replace(/\.?0+$/, '') || '0';
}

function fmtDuration(s) {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}

const debounce = (fn, ms = 250) => {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
};

/** The fields of a filter form with a value, as an object. */
function formValues(form) {
  const out = {};
  for (const [name, value] of new FormData(form)) if (String(value).trim() !== '') out[name] = String(value).trim();
  return out;
}

// ---- API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const key = () => sessionStorage.getItem(KEY);

/** Calls the API with the admin key; answers the JSON body (null when empty). */
async function api(method, path, { query, body, auth = key() } = {}) {
  const url = new URL(path, API);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  const headers = { authorization: `Bearer ${auth}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `the server cannot be reached (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const error = new ApiError(res.status, data?.error?.code ?? `http_${res.status}`, data?.error?.message ?? `HTTP ${res.status}`);
    if (res.status === 401 && auth === key()) signOut('The admin key was refused. Sign in again.');
    throw error;
  }
  return data;
}

// ---- Notices --------------------------------------------------------------------------------

let noticeTimer;
function notice(text, bad = false) {
  const box = $('notice');
  box.textContent = text;
  box.classList.toggle('bad', bad);
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 4000);
}

const failed = (what) => (e) => notice(`${what}: ${e.message}`, true);

/** A button that asks "Sure?" on the first click and acts on the second (within 4 s). */
function confirmButton(label, action, cls = 'danger small') {
  const button = el('button', { type: 'button', class: cls }, label);
  let armed = null;
  button.addEventListener('click', async (event) => {
    event.stopPropagation();
    if (!armed) {
      button.textContent = 'Sure?';
      button.classList.add('confirm');
      armed = setTimeout(() => { armed = null; button.textContent = label; button.classList.remove('confirm'); }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.disabled = true;
    try { await action(); } finally { button.disabled = false; button.textContent = label; button.classList.remove('confirm'); }
  });
  return button;
}

/** Replaces a table body's rows. */
function fill(table, rows) {
  table.tBodies[0].replaceChildren(...rows);
}

// ---- Views ----------------------------------------------------------------------------------

/** Each view: `enter(arg)` when shown, `refresh()` on its timer, `every` ms (0: no timer). */
const views = {};
let current = null;
let viewTimer = null;

function route() {
  const [name, arg] = decodeURIComponent(location.hash.slice(1)).split('/');
  const wanted = views[name] ? name : 'overview';
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== `view-${wanted}`;
  for (const link of document.querySelectorAll('[data-nav]')) {
    const on = link.dataset.nav === wanted || (wanted === 'message' && link.dataset.nav === 'messages');
    link.classList.toggle('current', on);
    if (on) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
  clearInterval(viewTimer);
  current = views[wanted];
  current.enter?.(arg);
  if (current.every) viewTimer = setInterval(() => { if (!document.hidden) current.refresh(); }, current.every);
}

// Overview: counters and charts from GET /api/v1/stats.

const samples = [];
let statsTimer = null;

const series = {
  connections: (s) => s.connections,
  messages: (s, p) => rate(s, p, 'messages'),
  deliveries: (s, p) => rate(s, p, 'deliveries'),
  acks: (s, p) => rate(s, p, 'acks'),
  errors: (s, p) => rate(s, p, 'api_errors'),
  rejected: (s, p) => rate(s, p, 'bad_input'),
};

function rate(sample, previous, field) {
  if (!previous || sample.uptime_seconds < previous.uptime_seconds) return null; // restarted
  const seconds = (sample.at - previous.at) / 1000;
  return seconds > 0 ? Math.max(0, (sample.totals[field] - previous.totals[field]) / seconds) : null;
}

/**
 * Values of a series over the kept samples (null where there is no rate yet). Counters are per
 * node: behind a load balancer polls may reach different nodes, so a rate is taken against the
 * last sample of the same node.
 */
function valuesOf(name) {
  return samples.map((s, i) => series[name](s, samples.slice(0, i).findLast((p) => p.node === s.node)));
}

function drawChart(svg, lines) {
  const [w, h] = [180, 48];
  const max = Math.max(1, ...lines.flat().filter((v) => v !== null));
  // The samples so far span the width; the window slides once it holds SAMPLES.
  const x = (i, count) => (w * i) / Math.max(1, count - 1);
  const y = (v) => h - 2 - ((h - 4) * v) / max;
  const shapes = [];
  lines.forEach((values, n) => {
    const points = values.map((v, i) => (v === null ? null : [x(i, values.length), y(v)])).filter(Boolean);
    if (!points.length) return;
    const path = points.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join('');
    const ns = 'http://www.w3.org/2000/svg';
    if (n === 0) {
      const area = document.createElementNS(ns, 'path');
      area.setAttribute('class', 'area');
      area.setAttribute('d', `${path}L${points.at(-1)[0].toFixed(1)},${h}L${points[0][0].toFixed(1)},${h}Z`);
      shapes.push(area);
    }
    const line = document.createElementNS(ns, 'path');
    line.setAttribute('class', n === 0 ? 'line' : 'line second');
    line.setAttribute('d', path);
    shapes.push(line);
  });
  svg.replaceChildren(...shapes);
}

/** The overview's counters, each a card with its value, chart and a line beneath. */
const CARDS = [['connections', 'Connections'], ['messages', 'Messages / s'], ['deliveries', 'Deliveries / s'],
  ['acks', 'Acks / s'], ['errors', 'Errors / s']];

function buildCards() {
  const svg = () => {
    const node = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    for (const [k, v] of [['class', 'chart'], ['viewBox', '0 0 180 48'], ['preserveAspectRatio', 'none'], ['aria-hidden', 'true']]) node.setAttribute(k, v);
    return node;
  };
  $('cards').replaceChildren(...CARDS.map(([name, title]) => el('div', { class: 'card stat', 'data-stat': name },
    el('h2', {}, title), el('p', { class: 'value', id: `stat-${name}` }, '–'), svg(),
    el('p', { class: 'sub', id: `stat-${name}-sub` }))));
}

function showStats() {
  const last = samples.at(-1);
  if (!last) return;
  $('node').textContent = last.node;
  const peak = (values) => Math.max(0, ...values.filter((v) => v !== null));
  for (const [name] of CARDS) {
    const values = valuesOf(name);
    const now = values.at(-1);
    $(`stat-${name}`).textContent = name === 'connections' ? now.toLocaleString() : fmtRate(now);
    const lines = name === 'errors' ? [values, valuesOf('rejected')] : [values];
    drawChart(document.querySelector(`[data-stat="${name}"] .chart`), lines);
    const total = { messages: 'messages', deliveries: 'deliveries', acks: 'acks', errors: 'api_errors' }[name];
    $(`stat-${name}-sub`).textContent = name === 'connections'
      ? `peak ${peak(values).toLocaleString()} · ${last.totals.logins.toLocaleString()} logins since start`
      : name === 'errors'
        ? `${last.totals.api_errors.toLocaleString()} API errors, ${last.totals.bad_input.toLocaleString()} rejected inputs (dashed) since start`
        : `peak ${fmtRate(peak(values))}/s · ${last.totals[total].toLocaleString()} since start`;
  }
  $('stat-about').textContent = `Node ${last.node}, up ${fmtDuration(last.uptime_seconds)}. Rates sampled every ${STATS_EVERY / 1000} s over the last ${(SAMPLES * STATS_EVERY) / 60000} minutes.`;
  const hooks = last.webhooks ?? [];
  $('webhooks').hidden = hooks.length === 0;
  $('webhooks-empty').hidden = hooks.length > 0;
  fill($('webhooks'), hooks.map((h) => el('tr', {},
    el('td', {}, h.name), el('td', { class: 'wrap mono' }, h.url),
    el('td', { class: 'num' }, h.queued.toLocaleString()), el('td', { class: 'num' }, h.sent.toLocaleString()),
    el('td', { class: 'num' }, h.dropped.toLocaleString()), el('td', { class: 'num' }, h.failed.toLocaleString()))));
}

async function pollStats() {
  try {
    const stats = await api('GET', 'stats');
    samples.push({ ...stats, at: performance.now() });
    if (samples.length > SAMPLES) samples.shift();
    $('live').className = 'live up';
    $('live').title = `Last answer ${fmtTime(Date.now())}`;
    showStats();
  } catch (e) {
    $('live').className = 'live down';
    $('live').title = e.message;
  }
}

views.overview = { enter: showStats };

// Clients: GET /api/v1/clients with filters; disconnect.

views.clients = {
  every: 3000,
  enter() { this.refresh(true); },
  /** Timed refreshes wait while a Disconnect button asks "Sure?". */
  async refresh(force = false) {
    if (!force && $('clients').querySelector('button.confirm')) return;
    const filter = formValues($('clients-filter'));
    let clients;
    try {
      clients = await api('GET', 'clients', { query: { ...filter, limit: MAX_CLIENTS } });
    } catch (e) {
      return failed('Listing clients')(e);
    }
    $('clients-empty').hidden = clients.length > 0;
    $('clients').hidden = clients.length === 0;
    $('clients-count').textContent = clients.length >= MAX_CLIENTS
      ? `The first ${MAX_CLIENTS.toLocaleString()} clients; narrow the filter to see others.`
      : `${clients.length.toLocaleString()} client${clients.length === 1 ? '' : 's'} online${Object.keys(filter).length ? ' matching' : ''}.`;
    fill($('clients'), clients.map((c) => {
      const subs = [...c.components.map((x) => `component ${x}`), ...(c.topics ?? []).map((x) => `topic ${x}`)];
      return el('tr', { 'data-client': c.id, 'data-user': c.user },
        el('td', {}, c.user), el('td', {}, c.app), el('td', {}, c.agent), el('td', {}, c.device ?? ''),
        el('td', {}, c.transport), el('td', {}, c.node), el('td', { class: 'mono' }, c.remote),
        el('td', { title: fmtTime(c.login) }, fmtAgo(c.login)),
        el('td', { class: 'wrap' }, subs.join(', ')),
        el('td', {}, confirmButton('Disconnect', async () => {
          try {
            await api('POST', `clients/${encodeURIComponent(c.id)}/disconnect`);
            notice(`Disconnected ${c.user} (${c.agent}, ${c.transport}).`);
          } catch (e) {
            failed('Disconnecting')(e);
          }
          // The client's node closes it a moment later.
          setTimeout(() => this.refresh(true), 300);
        })));
    }));
  },
};

// Messages: GET /api/v1/messages with filters and pages.

views.messages = {
  every: 4000,
  page: 1,
  enter() { this.refresh(); },
  query() {
    const filter = formValues($('messages-filter'));
    for (const field of ['from', 'to']) {
      if (filter[field]) filter[field] = new Date(filter[field]).getTime();
    }
    return { ...filter, page: this.page };
  },
  async refresh() {
    let result;
    try {
      result = await api('GET', 'messages', { query: this.query() });
    } catch (e) {
      return failed('Listing messages')(e);
    }
    const pages = Math.max(1, Math.ceil(result.total / result.size));
    $('messages-page').textContent = `page ${result.page} of ${pages} · ${result.total.toLocaleString()} record${result.total === 1 ? '' : 's'}`;
    $('messages-prev').closest('.pager').hidden = pages <= 1 && result.page <= 1;
    $('messages-prev').disabled = result.page <= 1;
    $('messages-next').disabled = result.page >= pages;
    $('messages-empty').hidden = result.items.length > 0;
    $('messages').hidden = result.items.length === 0;
    fill($('messages'), result.items.map((m) => el('tr', {
      'data-message': m.id,
      onclick: () => { location.hash = `#message/${m.id}`; },
    },
    el('td', {}, fmtTime(m.created)), el('td', { class: 'mono' }, m.id),
    el('td', { class: 'wrap' }, m.title ?? ''), el('td', {}, m.sender ?? ''), el('td', {}, m.component ?? ''),
    el('td', {}, el('span', { class: 'chips' }, Object.entries(m.summary).map(([s, n]) => chip(s, n)))))));
  },
};

// One message: GET/DELETE /api/v1/messages/{id}.

views.message = {
  every: 2000,
  id: null,
  enter(id) {
    this.id = id;
    $('message-title').textContent = `Message ${id}`;
    $('message-fields').replaceChildren();
    $('message-content').textContent = '';
    fill($('recipients'), []);
    this.refresh();
  },
  async refresh() {
    const id = this.id;
    let m;
    try {
      m = await api('GET', `messages/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status === 404 || e.status === 400) {
        $('message-missing').hidden = false;
        $('message-body').hidden = true;
        return;
      }
      return failed('Reading the message')(e);
    }
    if (id !== this.id) return;
    $('message-missing').hidden = true;
    $('message-body').hidden = false;
    $('message-title').textContent = m.title || `Message ${m.id}`;
    const fields = [['Id', m.id], ['App', m.app], ['Type', m.type], ['Component', m.component], ['Sender', m.sender],
      ['Agents', m.agents?.join(', ')], ['Created', fmtTime(m.created)], ['Expires', fmtTime(m.expires)]];
    $('message-fields').replaceChildren(...fields.filter(([, v]) => v !== undefined && v !== null && v !== '')
      .flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-field': k.toLowerCase() }, String(v))]));
    $('message-content').textContent = JSON.stringify(m.content, null, 2);
    $('message-summary').replaceChildren(...Object.entries(m.summary).map(([s, n]) => chip(s, n)));
    const wanted = formValues($('recipients-filter')).user;
    const all = m.recipients ?? [];
    $('recipients-filter').hidden = all.length <= 10;
    const shown = all.filter((r) => !wanted || r.user.includes(wanted)).slice(0, MAX_RECIPIENTS);
    fill($('recipients'), shown.map((r) => el('tr', { 'data-recipient': r.user },
      el('td', {}, r.user), el('td', { 'data-status': r.status }, chip(r.status), r.reason ? ` ${r.reason}` : ''),
      el('td', {}, fmtTime(r.updated)))));
    $('recipients-more').hidden = shown.length === all.length;
    $('recipients-more').textContent = `${shown.length} of ${all.length.toLocaleString()} recipients shown.`;
  },
};

// Send: POST /api/v1/messages.

function sendTarget() {
  return new FormData($('send-form')).get('to');
}

function showSendFields() {
  const to = sendTarget();
  for (const node of $('send-form').querySelectorAll('[data-for]')) {
    node.hidden = !node.dataset.for.split(' ').includes(to);
  }
}

/** The send body the form describes; throws with a message to show when it is incomplete. */
function sendBody() {
  const form = new FormData($('send-form'));
  const get = (name) => String(form.get(name) ?? '').trim();
  const list = (text) => text.split(/[\s,]+/).filter(Boolean);
  let content;
  if (form.get('format') === 'text') {
    content = String(form.get('content') ?? '');
  } else {
    try {
      content = JSON.parse(String(form.get('content') ?? ''));
    } catch (e) {
      throw new Error(`content is not JSON (${e.message}); choose "plain text" to send text`);
    }
  }
  const body = { content, type: Number(get('type') || 0) };
  const to = get('to');
  if (to === 'users') {
    body.receiver = list(get('receiver'));
    if (!body.receiver.length) throw new Error('name at least one receiver');
  } else if (to === 'topic') {
    body.topic = get('topic');
    if (!body.topic) throw new Error('name the topic');
  } else if (to === 'component' && !get('component')) {
    throw new Error('name the component');
  }
  if ((to === 'users' || to === 'component') && get('component')) body.component = get('component');
  if (get('title')) body.title = get('title');
  if (get('ttl')) body.ttl = Number(get('ttl'));
  if (get('agents')) body.agents = list(get('agents'));
  for (const field of ['app', 'sender', 'id']) if (get(field)) body[field] = get(field);
  return body;
}

async function send(event) {
  event.preventDefault();
  const result = $('send-result');
  result.classList.remove('bad');
  let body;
  try {
    body = sendBody();
  } catch (e) {
    result.classList.add('bad');
    result.replaceChildren(e.message);
    return;
  }
  $('send-submit').disabled = true;
  try {
    const sent = await api('POST', 'messages', { body });
    const what = sent.class === 'directed'
      ? `to ${sent.recipients} recipient${sent.recipients === 1 ? '' : 's'}`
      : sent.class === 'topic' ? `to topic ${body.topic}` : sent.class === 'component' ? `to component ${body.component} (live)` : 'to everyone online (live)';
    result.replaceChildren(`${sent.duplicate ? 'Already sent' : 'Sent'} ${sent.id} ${what}. `,
      sent.class === 'directed' ? el('a', { href: `#message/${sent.id}`, id: 'send-view' }, 'See its status →') : '');
  } catch (e) {
    result.classList.add('bad');
    result.replaceChildren(`Not sent: ${e.message}`);
  } finally {
    $('send-submit').disabled = false;
  }
}

views.send = {};

// Devices: GET/DELETE /api/v1/devices (device registrations and their push modes).

views.devices = {
  every: 10000,
  page: 1,
  enter() { this.refresh(true); },
  async refresh(force = false) {
    if (!force && $('devices').querySelector('button.confirm')) return;
    const filter = formValues($('devices-filter'));
    let result;
    try {
      result = await api('GET', 'devices', { query: { ...filter, page: this.page, size: 50 } });
    } catch (e) {
      const missing = e.status === 404 && e.code === 'not_found';
      $('devices').hidden = true;
      $('devices-empty').hidden = false;
      $('devices-empty').textContent = missing
        ? 'This server keeps no device registrations (GET /api/v1/devices is not available).'
        : `Device registrations cannot be read: ${e.message}`;
      return;
    }
    const pages = Math.max(1, Math.ceil(result.total / result.size));
    $('devices-page').textContent = `page ${result.page} of ${pages} · ${result.total.toLocaleString()} registration${result.total === 1 ? '' : 's'}`;
    $('devices-prev').closest('.pager').hidden = pages <= 1 && result.page <= 1;
    $('devices-prev').disabled = result.page <= 1;
    $('devices-next').disabled = result.page >= pages;
    $('devices').hidden = result.items.length === 0;
    $('devices-empty').hidden = result.items.length > 0;
    $('devices-empty').textContent = 'No device registration matches. Apps open a push mode with POST /api/v1/devices.';
    const short = (t) => (t && t.length > 24 ? `${t.slice(0, 12)}…${t.slice(-8)}` : t ?? '');
    fill($('devices'), result.items.map((d) => el('tr', { 'data-device': `${d.user}/${d.device}/${d.way}` },
      el('td', {}, d.user), el('td', {}, d.app), el('td', {}, d.agent ?? ''), el('td', {}, d.device),
      el('td', {}, d.way), el('td', { class: 'mono', title: d.token ?? '' }, short(d.token)),
      el('td', {}, (d.components ?? []).join(', ') || 'all'),
      el('td', { title: fmtTime(d.refreshed) }, d.refreshed ? fmtAgo(d.refreshed) : ''),
      el('td', {}, confirmButton('Remove', async () => {
        try {
          await api('DELETE', 'devices', { query: { user: d.user, app: d.app, device: d.device, way: d.way } });
          notice(`Closed ${d.way} push for ${d.user}'s ${d.device}.`);
        } catch (e) {
          failed('Removing')(e);
        }
        this.refresh(true);
      })))));
  },
};

// ---- Sign-in --------------------------------------------------------------------------------

function showApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  pollStats();
  clearInterval(statsTimer);
  statsTimer = setInterval(() => { if (!document.hidden) pollStats(); }, STATS_EVERY);
  route();
}

function signOut(message = '') {
  sessionStorage.removeItem(KEY);
  clearInterval(statsTimer);
  clearInterval(viewTimer);
  samples.length = 0;
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-key').value = '';
  $('login-key').focus();
}

async function signIn(event) {
  event.preventDefault();
  const candidate = $('login-key').value.trim();
  $('login-submit').disabled = true;
  $('login-error').textContent = '';
  try {
    await api('GET', 'stats', { auth: candidate });
    sessionStorage.setItem(KEY, candidate);
    showApp();
  } catch (e) {
    $('login-error').textContent = e.status === 401 ? 'That is not the admin key of this server.' : e.message;
  } finally {
    $('login-submit').disabled = false;
  }
}

function start() {
  buildCards();
  $('login-form').addEventListener('submit', signIn);
  $('logout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', () => { if (key()) route(); });
  const refreshClients = debounce(() => views.clients.refresh(true));
  $('clients-filter').addEventListener('input', refreshClients);
  $('clients-filter').addEventListener('submit', (e) => { e.preventDefault(); refreshClients(); });
  const refreshMessages = debounce(() => { views.messages.page = 1; views.messages.refresh(); });
  $('messages-filter').addEventListener('input', refreshMessages);
  $('messages-filter').addEventListener('submit', (e) => { e.preventDefault(); refreshMessages(); });
  $('messages-prev').addEventListener('click', () => { views.messages.page -= 1; views.messages.refresh(); });
  $('messages-next').addEventListener('click', () => { views.messages.page += 1; views.messages.refresh(); });
  $('recipients-filter').addEventListener('input', debounce(() => views.message.refresh()));
  $('recipients-filter').addEventListener('submit', (e) => e.preventDefault());
  $('message-delete').replaceWith(Object.assign(confirmButton('Delete', async () => {
    try {
      await api('DELETE', `messages/${encodeURIComponent(views.message.id)}`);
      notice(`Deleted message ${views.message.id}.`);
      location.hash = '#messages';
    } catch (e) {
      failed('Deleting')(e);
    }
  }, 'danger'), { id: 'message-delete' }));
  $('send-form').addEventListener('submit', send);
  $('send-form').addEventListener('change', showSendFields);
  const refreshDevices = debounce(() => { views.devices.page = 1; views.devices.refresh(true); });
  $('devices-filter').addEventListener('input', refreshDevices);
  $('devices-filter').addEventListener('submit', (e) => { e.preventDefault(); refreshDevices(); });
  $('devices-prev').addEventListener('click', () => { views.devices.page -= 1; views.devices.refresh(true); });
  $('devices-next').addEventListener('click', () => { views.devices.page += 1; views.devices.refresh(true); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && key()) { pollStats(); current?.refresh?.(); } });
  showSendFields();
  if (key()) showApp(); else signOut();
}

start();
