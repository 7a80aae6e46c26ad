// Open each PMG node's help page in the real ComfyUI front end (Debian's Chromium through
// playwright-core) and write what it saw as JSON for tests/test_browser.py.
//
//   node tests/browser/node_help.mjs --url http://127.0.0.1:8188 --out report.json --expect FILE.json
//
// FILE.json maps each node id to a sentence of its page (web/docs/<id>.md). For each node: it is
// added to the graph and selected, the selection toolbox's info button opens the node library's
// help panel, and the panel must show that sentence (the front end fetched the pack's page, not
// the node's description). Records {ok, nodes: {id: {shown, status}}, error}.
import fs from 'fs';
import { createRequire } from 'module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) => (
  arg.startsWith('--') ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []));
const expected = JSON.parse(fs.readFileSync(args.expect, 'utf8'));
const report = { ok: false, nodes: {}, console_errors: [] };
const save = () => fs.writeFileSync(args.out, JSON.stringify(report, null, 2));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on('pageerror', (e) => report.console_errors.push(`pageerror: ${String(e).slice(0, 300)}`));
  // What the front end asked for and got: the page of each node, by its URL.
  const fetched = {};
  page.on('response', (r) => { if (r.url().includes('/docs/')) fetched[new URL(r.url()).pathname] = r.status(); });
  await page.goto(args.url);
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph, null, { timeout: 120000 });
  await page.keyboard.press('Escape');  // the first-visit template browser
  await page.waitForTimeout(500);
  for (const [nodeId, sentence] of Object.entries(expected)) {
    const entry = { shown: false, attempts: 0 };
    // Two tries: the first node can meet a canvas that is still settling after the page load.
    for (; entry.attempts < 2 && !entry.shown; entry.attempts++) try {
      await page.evaluate((type) => {
        const { app, LiteGraph } = window;
        app.graph.clear();
        const node = LiteGraph.createNode(type);
        node.pos = [300, 200];
        app.graph.add(node);
        app.canvas.deselectAll?.();
        app.canvas.selectNode(node);
        app.canvas.setDirty(true, true);
      }, nodeId);
      await page.waitForTimeout(400);
      // A DOM click: the toolbox floats over the canvas, where playwright's pointer checks never settle.
      await page.waitForFunction(() => !!document.querySelector('[data-testid="info-button"]'), null, { timeout: 10000 });
      await page.evaluate(() => document.querySelector('[data-testid="info-button"]').click());
      await page.waitForFunction((text) => document.body.innerText.includes(text), sentence, { timeout: 15000 });
      entry.shown = true;
      entry.requests = Object.entries(fetched).filter(([p]) => p.includes(nodeId));
      // Close the panel again (the same button toggles it) so the next node opens its own page.
      await page.evaluate(() => document.querySelector('[data-testid="info-button"]')?.click());
      await page.waitForTimeout(300);
      delete entry.error;
    } catch (error) {
      entry.error = String(error?.message || error).slice(0, 1500);
      entry.requests = Object.entries(fetched).filter(([p]) => p.includes(nodeId));
    }
    report.nodes[nodeId] = entry;
    save();
  }
  report.ok = Object.values(report.nodes).every((n) => n.shown);
} catch (error) {
  report.error = String(error?.stack || error).slice(0, 2000);
} finally {
  save();
  await browser.close();
}
