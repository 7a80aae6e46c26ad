// Load each UI workflow in the real ComfyUI front end (headless Chromium) and compare the
// front end's own API export (app.graphToPrompt) with the committed copy in workflows/api/.
//
// Optional developer check against any server (tests/test_browser.py runs the same check, and more,
// in the suite against its own server; tests/browser/ui_checks.mjs is its driver):
//   apt-get install chromium && npm install --prefix /tmp/pw playwright-core@1
//   .venv/bin/python -m pmg_core serve --port 8188 &        # or any ComfyUI with this pack
//   NODE_PATH=/tmp/pw/node_modules node scripts/check_workflows_in_browser.mjs \
//       http://127.0.0.1:8188 workflows pmg_movie_poster pmg_movie_poster_sdxl pmg_sticker pmg_alpha_sweep
//       [--screenshot out.png]
//
// Fails (exit 1) when a node type is unknown to the front end, a dialog other than "Missing Models"
// opens on load (missing nodes, load errors), or the exported API graph differs from workflows/api/.
// A missing checkpoint is expected where the server lacks it: the movie workflows hint at the
// real SD1.5 / SDXL files, and the dialog offering them is printed, not counted.
// Console errors from blocked calls to api.comfy.org (the machine is offline) are expected.
import fs from 'fs';
import { createRequire } from 'module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const shotIndex = args.indexOf('--screenshot');
const screenshot = shotIndex >= 0 ? args.splice(shotIndex, 2)[1] : null;
const [url, dir, ...names] = args;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run'],
});
const page = await browser.newPage({ viewport: { width: 1800, height: 1000 } });
const consoleErrors = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
await page.goto(url);
await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 120000 });
await page.waitForTimeout(8000); // the editor finishes its start-up dialogs
await page.keyboard.press('Escape');

// Sorted node ids and inputs: key order is not part of a graph's meaning.
const normalise = (graph) => JSON.stringify(Object.entries(graph)
  .sort((a, b) => Number(a[0]) - Number(b[0]))
  .map(([id, node]) => [id, node.class_type, node._meta?.title, Object.entries(node.inputs).sort()]));

let failures = 0;
for (const name of names) {
  const ui = JSON.parse(fs.readFileSync(`${dir}/${name}.json`, 'utf8'));
  const api = JSON.parse(fs.readFileSync(`${dir}/api/${name}.json`, 'utf8'));
  consoleErrors.length = 0;
  const result = await page.evaluate(async (workflow) => {
    await window.app.loadGraphData(workflow, true, true, 'check');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const dialogs = [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.slice(0, 300));
    const unknown = workflow.nodes.filter((n) => !(n.type in window.LiteGraph.registered_node_types)).map((n) => n.type);
    const exported = await window.app.graphToPrompt();
    return { dialogs, unknown, output: exported.output, nodes: window.app.graph._nodes.length };
  }, ui);
  const same = normalise(result.output) === normalise(api);
  const blocked = consoleErrors.filter((e) => !e.includes('Content Security Policy') && !e.includes('Failed to fetch'));
  console.log(`${name}: nodes=${result.nodes} unknown_types=${JSON.stringify(result.unknown)} ` +
              `dialogs=${JSON.stringify(result.dialogs)} other_console_errors=${blocked.length} api_equal=${same}`);
  if (!same) {
    for (const id of new Set([...Object.keys(api), ...Object.keys(result.output)])) {
      const expected = JSON.stringify(api[id]?.inputs);
      const actual = JSON.stringify(result.output[id]?.inputs);
      if (expected !== actual) console.log(`  node ${id}: api copy ${expected}\n           front end ${actual}`);
    }
  }
  const otherDialogs = result.dialogs.filter((text) => !text.includes('Missing Models'));
  if (!same || result.unknown.length || otherDialogs.length) failures++;
}
if (screenshot && names.length) {
  const first = JSON.parse(fs.readFileSync(`${dir}/${names[0]}.json`, 'utf8'));
  await page.evaluate(async (workflow) => { await window.app.loadGraphData(workflow); }, first);
  await page.waitForTimeout(2000);
  await page.screenshot({ path: screenshot });
}
await browser.close();
process.exit(failures ? 1 : 0);
