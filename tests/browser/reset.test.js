// Resume past the retained history, in a real browser, on each transport: the SDK reports
// `reset` for the patterns whose history was cut (Type 10, SSE `event: reset`, the poll's
// MPS-Reset header), then gets what is retained, oldest first.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Mps, launchBrowser, openPage, sdkPage, until } from './harness.js';

let mps;
let browser;
let ids; // five messages on hist/a; the server keeps the last two

before(async () => {
  mps = await Mps.start({ MPS_TOPICS__RETENTION_COUNT: '2' });
  browser = await launchBrowser();
  ids = [];
  for (let n = 1; n <= 5; n++) ids.push((await mps.send({ content: { n }, topic: 'hist/a' })).id);
});

after(async () => {
  await browser?.close();
  await mps?.stop();
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: resuming from a dropped id reports reset, then the retained messages`, async () => {
    const { token } = await mps.token(`user-${transport}`);
    const page = await openPage(browser.context, mps, sdkPage({
      url: mps.ws, token, topics: ['hist/#'], transports: [transport], lastId: ids[0],
    }));
    await until(async () => (await page.evaluate(() => window.got.length)) >= 2, 10000,
      `the retained messages (page log: ${page.logs.join(' | ')})`);
    const events = await page.evaluate(() => window.events);
    const resets = events.filter(([e]) => e === 'reset').map(([, v]) => v);
    assert.equal(resets.length, 1, JSON.stringify(events));
    assert.deepEqual(resets[0].topics, ['hist/#']);
    assert.equal(resets[0].error.code, 'history_truncated');
    // The reset comes before the messages it is about.
    const order = events.filter(([e]) => ['open', 'reset', 'message'].includes(e)).map(([e]) => e);
    assert.deepEqual(order, ['open', 'reset', 'message', 'message']);
    assert.deepEqual((await page.evaluate(() => window.got)).map((m) => m.id), ids.slice(3));
    await page.close();
  });
}
