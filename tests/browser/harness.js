// What every browser test needs: the real mps binary on a loopback port with its own data
// directory, its HTTP API, and a headless Chromium with a fresh profile.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ADMIN_KEY = 'browser-test-admin-key';
export const JWT_SECRET = 'browser-test-jwt-secret';
// Not MPS_*: the server reads every MPS_ variable as configuration.
const BIN = process.env.TEST_MPS_BIN || path.join(ROOT, 'target/debug/mps');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// Servers still running when the test process exits (a failed hook, a crash) are killed with it.
const running = new Set();
process.on('exit', () => { for (const child of running) child.kill('SIGKILL'); });

/** A running `mps serve`, which can be killed and started again on the same port and data. */
export class Mps {
  /** `env`: configuration as `MPS_*` variables, e.g. `{ MPS_TOPICS__RETENTION_COUNT: '2' }`. */
  static async start(env = {}) {
    const mps = new Mps(mkdtempSync(path.join(tmpdir(), 'mps-browser-')), env);
    await mps.spawn('127.0.0.1:0');
    return mps;
  }

  constructor(dataDir, env) {
    this.dataDir = dataDir;
    this.env = env;
    this.child = null;
    this.addr = null;
    this.stderr = '';
  }

  get http() { return `http://${this.addr}`; }
  get ws() { return `ws://${this.addr}/ws`; }

  async spawn(listen) {
    // Binding the old port may fail for a moment right after a kill: retry briefly.
    for (let tries = 0; ; tries++) {
      try {
        this.addr = await this.spawnOnce(listen);
        return;
      } catch (e) {
        if (tries >= 20 || !/in use|bind/i.test(e.message)) throw e;
        await sleep(250);
      }
    }
  }

  spawnOnce(listen) {
    this.stderr = '';
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MPS_')));
    const child = spawn(BIN, ['serve', '--listen', listen, '--data-dir', this.dataDir,
      '--admin-key', ADMIN_KEY, '--jwt-secret', JWT_SECRET], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...env, RUST_LOG: 'warn', ...this.env },
    });
    this.child = child;
    running.add(child);
    child.on('exit', () => running.delete(child));
    child.stderr.on('data', (d) => { this.stderr += d; });
    return new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`mps did not start: ${this.stderr}`)); }, 20000);
      child.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/mps listening on http:\/\/(\S+)/);
        if (m) { clearTimeout(timer); resolve(m[1]); }
      });
      child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`mps exited with ${code}: ${this.stderr}`)); });
      child.on('error', (e) => { clearTimeout(timer); reject(e); });
    });
  }

  /** Stop the process (SIGKILL by default: nothing is flushed on the way out). */
  async kill(signal = 'SIGKILL') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  /** Kill, then start again on the same port and data directory. */
  async restart() {
    await this.kill();
    await this.spawn(this.addr);
  }

  async stop() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** An admin API call; returns the parsed JSON answer (or null for no body). */
  async api(method, urlPath, body) {
    const res = await fetch(`${this.http}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${urlPath}: HTTP ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** A client token for `user` (and its answer: `urls`...). */
  token(user, extra = {}) { return this.api('POST', '/api/v1/tokens', { user, ...extra }); }

  send(message) { return this.api('POST', '/api/v1/messages', message); }

  /** Send, retrying while the server is down (e.g. during a restart). */
  async sendSurely(message, ms = 30000) {
    const end = Date.now() + ms;
    for (;;) {
      try {
        return await this.send(message);
      } catch (e) {
        if (Date.now() > end) throw e;
        await sleep(100);
      }
    }
  }
}

/** Headless Chromium (Debian's) with a fresh profile; `close()` removes the profile. */
export async function launchBrowser() {
  const profile = mkdtempSync(path.join(tmpdir(), 'mps-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-quic'],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Opens a page on the mps origin and runs `script` in it, as a page's own script would run.
 * The document is the server's real `/healthz` (a blank page as far as scripts go): a document
 * that came over loopback, so Chromium's local-network checks treat the page as the local page
 * it is. Page errors and console lines are kept on `page.logs` for failures.
 * `setup(page)` runs before the page loads (routes, init scripts).
 */
export async function openPage(context, mps, script, { setup } = {}) {
  const page = await context.newPage();
  page.logs = [];
  page.on('console', (m) => page.logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`pageerror: ${e.message}`));
  if (setup) await setup(page);
  await page.goto(`${mps.http}/healthz`);
  await page.evaluate(script);
  return page;
}

/** A page script that loads the SDK from the server and records what the client reports. */
export function sdkPage(options) {
  return `(async () => {
  const { connect } = await import('/sdk/mps.js');
  window.got = [];
  window.events = [];
  const client = connect(${JSON.stringify(options)});
  window.client = client;
  client.on('message', (m) => { window.got.push(m); window.events.push(['message', m.id]); });
  for (const name of ['open', 'close', 'error', 'reset', 'transport']) {
    client.on(name, (v) => window.events.push([name, v]));
  }
})()`;
}

/** Polls `fn()` (in node) until it returns a truthy value; returns it, or fails after `ms`. */
export async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A loopback port that nothing listens on (taken, then released). */
export function closedPort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}
