// The web console at /console/ in a real browser against the real server: sign in with the
// admin key, watch a client (the SDK in another page) come online, send it a message from the
// form and see its status go to delivered and then acked when the client acks it, disconnect
// the client, and the other views. Screenshots go to tests/browser/output/ (git-ignored; CI keeps
// them as artifacts).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

import { ADMIN_KEY, Mps, ROOT, launchBrowser, openPage, sdkPage, until } from './harness.js';

const OUTPUT = path.join(ROOT, 'tests/browser/output');

let mps;
let browser;

before(async () => {
  mps = await Mps.start();
  browser = await launchBrowser();
  mkdirSync(OUTPUT, { recursive: true });
});

after(async () => {
  await browser?.close();
  await mps?.stop();
});

/** The console page, signed in. */
async function signedIn() {
  const page = await browser.context.newPage();
  page.logs = [];
  page.on('console', (m) => page.logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`pageerror: ${e.message}`));
  const answer = await page.goto(`${mps.http}/console`);
  assert.equal(new URL(page.url()).pathname, '/console/', 'redirected to the page');
  assert.equal(answer.status(), 200);
  assert.match(answer.headers()['content-security-policy'], /script-src 'self'/);

  await page.fill('#login-key', 'not-the-key');
  await page.click('#login-submit');
  await until(async () => (await page.textContent('#login-error')).includes('not the admin key'), 10000, 'the wrong key to be refused');

  await page.fill('#login-key', ADMIN_KEY);
  await page.click('#login-submit');
  await page.waitForSelector('#app:not([hidden])');
  await until(async () => (await page.textContent('#node')) !== '…', 10000, 'the node name');
  return page;
}

/** Errors in the page, besides the answers the tests provoke (a wrong key, no device API). */
const pageErrors = (page) => page.logs.filter((l) => l.startsWith('pageerror')
  || (l.startsWith('console.error') && !l.includes('Failed to load resource')));

/** Opens a view from the navigation bar. */
async function nav(page, view) {
  await page.click(`[data-nav="${view}"]`);
  await page.waitForSelector(`#view-${view}:not([hidden])`);
}

test('the console signs in, lists a client, sends to it and shows the ack', async () => {
  const consolePage = await signedIn();
  assert.equal(await consolePage.evaluate(() => sessionStorage.getItem('mps.console.key')), ADMIN_KEY);

  // A client comes online while the clients view is open.
  await nav(consolePage, 'clients');
  const { token } = await mps.token('ops-alice');
  const client = await openPage(browser.context, mps, sdkPage({ url: mps.ws, token, autoAck: false }));
  const row = consolePage.locator('#clients tr[data-user="ops-alice"]');
  await row.waitFor({ timeout: 15000 });
  assert.deepEqual(
    (await row.locator('td').allTextContents()).slice(2, 5),
    ['bs', '', 'websocket'],
    'agent, device, transport',
  );

  // Send from the form, then follow the link to its record.
  await nav(consolePage, 'send');
  await consolePage.fill('#send-receiver', 'ops-alice');
  await consolePage.fill('#send-title', 'Console test');
  await consolePage.fill('#send-content', '{"alarm": "fire", "room": "2-17"}');
  await consolePage.click('#send-submit');
  const link = consolePage.locator('#send-view');
  await link.waitFor({ timeout: 10000 });
  const result = await consolePage.textContent('#send-result');
  const id = result.match(/Sent (\d+) to 1 recipient/)?.[1];
  assert.ok(id, result);

  // The client got it, exactly as sent.
  await until(() => client.evaluate(() => window.got.length === 1), 10000, 'the message at the client');
  const got = await client.evaluate(() => window.got[0]);
  assert.equal(got.id, id);
  assert.deepEqual(got.EventData.ext, { alarm: 'fire', room: '2-17' });

  await link.click();
  await consolePage.waitForSelector('#view-message:not([hidden])');
  const status = consolePage.locator('#recipients tr[data-recipient="ops-alice"] td[data-status]');
  await until(async () => (await status.getAttribute('data-status').catch(() => null)) === 'delivered', 15000, 'status delivered');
  assert.equal(await consolePage.textContent('#message-title'), 'Console test');
  assert.equal(await consolePage.textContent('[data-field="sender"]'), 'console');

  // The client acks; the open record follows.
  await client.evaluate((mid) => window.client.ack(mid), id);
  await until(async () => (await status.getAttribute('data-status')) === 'acked', 15000, 'status acked');
  assert.match(await consolePage.textContent('#message-summary'), /acked 1/);
  const shot = path.join(OUTPUT, 'console-message.png');
  await consolePage.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);

  // The record in the list, filtered by receiver and status.
  await nav(consolePage, 'messages');
  await consolePage.fill('#messages-filter input[name="receiver"]', 'ops-alice');
  await consolePage.selectOption('#messages-filter select[name="status"]', 'acked');
  await until(async () => (await consolePage.locator('#messages tbody tr').count()) === 1
    && (await consolePage.getAttribute('#messages tbody tr', 'data-message')) === id, 10000, 'the record listed');

  // Disconnect the client from its row (two clicks: the second confirms).
  await nav(consolePage, 'clients');
  await row.waitFor();
  const before = await row.getAttribute('data-client');
  await row.locator('button').click();
  assert.equal(await row.locator('button').textContent(), 'Sure?');
  await row.locator('button').click();
  await until(() => client.evaluate(() => window.events.some(([e, v]) => e === 'close' && v.code === 4403)), 10000, 'the client closed with 4403');
  await until(async () => (await consolePage.locator(`#clients tr[data-client="${before}"]`).count()) === 0, 10000, 'the row gone');

  // Counters and charts after the activity above.
  await nav(consolePage, 'overview');
  await until(async () => Number(await consolePage.textContent('#stat-connections')) >= 0
    && (await consolePage.locator('[data-stat="messages"] .chart path').count()) > 0, 15000, 'charts drawn');
  assert.match(await consolePage.textContent('#stat-messages-sub'), /[1-9][\d,]* since start/);
  assert.equal(await consolePage.isVisible('#webhooks-empty'), true);
  const overview = path.join(OUTPUT, 'console.png');
  await consolePage.screenshot({ path: overview, fullPage: true });
  console.log(`screenshot: ${overview}`);

  assert.deepEqual(pageErrors(consolePage), [], consolePage.logs.join('\n'));
  await client.close();
  await consolePage.close();
});

test('device registrations are listed and closed; sign-out', async () => {
  await mps.api('POST', '/api/v1/devices', { user: 'ops-bob', device: 'pixel-1', way: 'fcm', token: 'fcm-token-of-pixel-1' });
  await mps.api('POST', '/api/v1/devices', { user: 'ops-carol', device: 'iphone-2', way: 'apns', token: 'ab'.repeat(32) });
  const page = await signedIn();
  await nav(page, 'devices');
  const bob = page.locator('#devices tr[data-device="ops-bob/pixel-1/fcm"]');
  await bob.waitFor({ timeout: 10000 });
  assert.equal(await page.locator('#devices tbody tr').count(), 2);
  const shot = path.join(OUTPUT, 'console-devices.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  await page.fill('#devices-filter input[name="user"]', 'ops-bob');
  await until(async () => (await page.locator('#devices tbody tr').count()) === 1, 10000, 'the filter');
  assert.deepEqual((await bob.locator('td').allTextContents()).slice(0, 5), ['ops-bob', 'default', 'android', 'pixel-1', 'fcm']);
  await bob.locator('button').click();
  await bob.locator('button').click();
  await until(async () => (await page.isVisible('#devices-empty')), 10000, 'the registration gone');
  const left = await mps.api('GET', '/api/v1/devices');
  assert.deepEqual(left.items.map((d) => d.user), ['ops-carol']);

  // A sent message with invalid JSON content is refused in the page, not sent.
  await nav(page, 'send');
  await page.fill('#send-receiver', 'nobody');
  await page.fill('#send-content', '{not json');
  await page.click('#send-submit');
  assert.match(await page.textContent('#send-result'), /content is not JSON/);
  assert.equal((await mps.api('GET', '/api/v1/messages?receiver=nobody')).total, 0);

  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('mps.console.key')), null);
  assert.deepEqual(pageErrors(page), [], page.logs.join('\n'));
  await page.close();
});

test('the console files are served with validators', async () => {
  for (const file of ['', 'console.js', 'console.css']) {
    const res = await fetch(`${mps.http}/console/${file}`);
    assert.equal(res.status, 200, file);
    const etag = res.headers.get('etag');
    assert.ok(etag, file);
    const again = await fetch(`${mps.http}/console/${file}`, { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304, file);
  }
  const missing = await fetch(`${mps.http}/console/nothing.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, 'not_found');
});
