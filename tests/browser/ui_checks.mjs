// Drive the real ComfyUI front end (Debian's Chromium through playwright-core) against a
// running server with this pack, and write what it saw as JSON for tests/test_browser.py.
//
//   node tests/browser/ui_checks.mjs --url http://127.0.0.1:8188 --repo . --out report.json \
//        --good-history FILE --bad-history FILE [--good-folder DIR] [--screenshots docs/screenshots]
//
// One browser for every check, in this order (each records {ok, ..., error} and the next
// one still runs): templates (the first-visit template browser lists the pack's cards with
// their thumbnails), open (each UI workflow loads, with the dialogs it shows and the models
// a missing-model dialog offers, and exports its API copy), run (the sticker workflow as
// shipped, a fresh seed, runs from the Run button and its images show),
// keywords (PMG Preference Extractor shows its keywords), upload (the loader's upload
// button stores a good history file and selects it; a bad one shows the loader's error).
import fs from 'fs';
import path from 'path';
import { createRequire } from 'module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) => (
  arg.startsWith('--') ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []));
const WORKFLOWS = ['pmg_movie_poster', 'pmg_movie_poster_sdxl', 'pmg_sticker', 'pmg_alpha_sweep'];
const PACK = args.pack || 'comfyui-pmg';
const RUN_STEPS = args['run-steps'] ? Number(args['run-steps']) : null;  // null: the workflow's own steps
const report = { started: new Date().toISOString(), timings: {}, console_errors: [] };
const shots = args.screenshots || null;
const readJson = (file) => JSON.parse(fs.readFileSync(file, 'utf8'));

// Chromium's own calls home are switched off; without these flags it hammers the closed network.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
page.on('console', (m) => { if (m.type() === 'error') report.console_errors.push(m.text().slice(0, 300)); });
// Listening from the start turns Chromium's file-chooser interception on before any click
// (a listener added just before the click can lose the race and the chooser never shows).
const choosers = [];
page.on('filechooser', (chooser) => choosers.push(chooser));
page.on('pageerror', (e) => report.console_errors.push(`pageerror: ${String(e).slice(0, 300)}`));

async function step(name, body) {
  const began = Date.now();
  try {
    report[name] = { ok: true, ...(await body()) };
  } catch (error) {
    report[name] = { ok: false, error: String(error?.stack || error).slice(0, 2000) };
    if (args['failure-shots']) await page.screenshot({ path: path.join(args['failure-shots'], `failed_${name}.png`) }).catch(() => {});
  }
  report.timings[name] = (Date.now() - began) / 1000;
  fs.writeFileSync(args.out, JSON.stringify(report, null, 2));  // partial results survive a crash
}

async function screenshot(name) {
  if (shots) await page.screenshot({ path: path.join(shots, `${name}.png`) });
}

const dialogTexts = () => page.evaluate(() => [...document.querySelectorAll('.p-dialog')]
  .filter((d) => d.offsetParent !== null).map((d) => d.innerText.slice(0, 400)));

async function closeDialogs() {
  for (let i = 0; i < 5 && (await dialogTexts()).length; i++) {
    if (i < 2) await page.keyboard.press('Escape');
    else await page.locator('.p-dialog button[aria-label="Close"], .p-dialog .p-dialog-close-button').first().click().catch(() => {});
    await page.waitForTimeout(300);
  }
}

// Sorted node ids and inputs: key order is not part of a graph's meaning.
const normalise = (graph) => JSON.stringify(Object.entries(graph)
  .sort((a, b) => Number(a[0]) - Number(b[0]))
  .map(([id, node]) => [id, node.class_type, Object.entries(node.inputs).sort()]));

async function loadWorkflow(name) {
  const workflow = readJson(path.join(args.repo, 'workflows', `${name}.json`));
  await page.evaluate(async ([wf, title]) => { await window.app.loadGraphData(wf, true, true, title); }, [workflow, name]);
  await page.waitForTimeout(1500);  // the missing-model check runs after the graph is configured
  return workflow;
}

const t0 = Date.now();
await page.goto(args.url);
await page.waitForFunction(() => window.app?.graph && window.LiteGraph && window.app.extensionManager, null,
                           { timeout: 120000 });
report.timings.page_ready = (Date.now() - t0) / 1000;
// The stock "Introducing Nodes 2.0" banner shifts the layout; close it when it is there.
await page.evaluate(() => {
  const text = [...document.querySelectorAll('span')].find((s) => s.textContent.includes('Introducing Nodes 2.0'));
  text?.parentElement?.parentElement?.querySelector('button.absolute')?.click();
});

if (shots) {
  // Screenshots: text stays drawn when the whole graph is fitted on screen, and no minimap.
  await page.evaluate(async () => {
    await window.app.extensionManager.setting.set('LiteGraph.Canvas.LowQualityRenderingZoomThreshold', 0.2);
    await window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false);
  });
}

// Frame the pipeline's nodes (not the long notes node) as large as the screen allows, so
// the screenshot stays above the zoom where the canvas stops drawing text.
async function fitView() {
  await page.evaluate(() => {
    const canvas = window.app.canvas;
    const nodes = window.app.graph._nodes.filter((n) => n.type !== 'MarkdownNote');
    const left = Math.min(...nodes.map((n) => n.pos[0])), top = Math.min(...nodes.map((n) => n.pos[1] - 30));
    const right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const [width, height] = [canvas.canvas.clientWidth - 80, canvas.canvas.clientHeight - 140];
    const scale = Math.min(1, width / (right - left), height / (bottom - top));
    canvas.ds.scale = scale;
    canvas.ds.offset = [60 / scale - left, 100 / scale - top];
    canvas.setDirty(true, true);
  });
  await page.waitForTimeout(800);
}

await step('templates', async () => {
  // The stock template browser opens by itself on a first visit; its Extensions group names the pack.
  const dialog = page.locator('.p-dialog').filter({ hasText: 'Templates' });
  let firstVisit = true;
  try {
    await dialog.waitFor({ timeout: Number(args['first-visit-wait'] || 20000) });
  } catch {
    // Not a first visit (the server's user settings remember one): open it from the menu command.
    firstVisit = false;
    await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
    await dialog.waitFor({ timeout: 15000 });
  }
  await dialog.getByText(PACK, { exact: true }).click();
  // Each card's thumbnail is fetched into a blob: URL; a missing one falls back to default-template.png.
  await page.waitForFunction((names) => names.every((name) => {
    const img = document.querySelector(`[data-testid="template-workflow-${name}"] img`);
    return img && img.complete && (img.src.startsWith('blob:') || img.src.includes('default-template'));
  }), WORKFLOWS, { timeout: 20000 }).catch(() => {});
  const cards = await page.evaluate((names) => Object.fromEntries(names.map((name) => {
    const card = document.querySelector(`[data-testid="template-workflow-${name}"]`);
    const img = card?.querySelector('img');
    return [name, card && { title: card.querySelector('h3')?.innerText, description: card.querySelector('p')?.innerText,
      src: img?.getAttribute('src'), width: img?.naturalWidth, height: img?.naturalHeight }];
  })), WORKFLOWS);
  await page.waitForTimeout(500);
  await screenshot('template_browser');
  // Opening a card loads its workflow (the dialog closes).
  await dialog.locator('[data-testid="template-workflow-pmg_sticker"]').click();
  await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.type === 'PMGStickerGeneratorLoader'),
                             null, { timeout: 15000 });
  const opened = await page.evaluate(() => window.app.graph._nodes.map((n) => n.type));
  await page.waitForTimeout(1000);
  return { first_visit: firstVisit, cards, opened, dialogs_after: await dialogTexts() };
});
await closeDialogs();

await step('open', async () => {
  const results = {};
  for (const name of WORKFLOWS) {
    const workflow = await loadWorkflow(name);
    const dialogs = await dialogTexts();
    // What ComfyUI's missing-model dialog offers: one "<directory> / <name>" row per model, with its
    // download link or the reason it cannot offer one.
    const missingModels = await page.evaluate(() => [...document.querySelectorAll('.comfy-missing-models li')]
      .map((li) => ({ text: li.innerText, links: [...li.querySelectorAll('a')].map((a) => a.href) })));
    const state = await page.evaluate(async (types) => ({
      unknown: types.filter((t) => !(t in window.LiteGraph.registered_node_types)),
      output: (await window.app.graphToPrompt()).output,
      nodes: window.app.graph._nodes.length,
    }), workflow.nodes.map((n) => n.type));
    const api = readJson(path.join(args.repo, 'workflows', 'api', `${name}.json`));
    results[name] = { dialogs, missing_models: missingModels, unknown: state.unknown, nodes: state.nodes,
                      api_equal: normalise(state.output) === normalise(api) };
    if (name === 'pmg_movie_poster') await screenshot('missing_model_dialog');
    await closeDialogs();
    if (name === 'pmg_movie_poster' && shots) {
      await fitView();
      await screenshot('movie_poster_workflow');
    }
  }
  return { workflows: results };
});

await step('run', async () => {
  await loadWorkflow('pmg_sticker');
  // A fresh seed: a real run (not served from ComfyUI's cache); the workflow's own steps unless told.
  const seed = Math.floor(Math.random() * 1e9);
  const steps = await page.evaluate(([steps, seed]) => {
    const sampler = window.app.graph.getNodeById(9);
    const widget = sampler.widgets.find((w) => w.name === 'steps');
    if (steps !== null) widget.value = steps;
    sampler.widgets.find((w) => w.name === 'seed').value = seed;
    window.__pmgEvents = [];
    for (const type of ['executed', 'execution_success', 'execution_error']) {
      window.comfyAPI.api.api.addEventListener(type, (e) => window.__pmgEvents.push({ type, detail: e.detail }));
    }
    return widget.value;
  }, [RUN_STEPS, seed]);
  const began = Date.now();
  await page.getByRole('button', { name: /^Run/ }).first().click();
  await page.waitForFunction(() => window.__pmgEvents.some((e) => e.type !== 'executed'), null, { timeout: 240000 });
  const seconds = (Date.now() - began) / 1000;
  const events = await page.evaluate(() => window.__pmgEvents.map((e) => ({ type: e.type, node: e.detail?.node,
    images: e.detail?.output?.images, error: e.detail?.exception_message })));
  // The saved candidates appear on the Save Image node once their files have loaded.
  await page.waitForFunction(() => (window.app.graph.getNodeById(12).imgs || []).some((i) => i.complete && i.naturalWidth > 0),
                             null, { timeout: 30000 });
  const shown = await page.evaluate(() => (window.app.graph.getNodeById(12).imgs || []).map((i) => ({
    src: i.src, width: i.naturalWidth, height: i.naturalHeight })));
  if (shots) {
    await fitView();
    await screenshot('sticker_run');
  }
  return { seconds, seed, steps, events, shown };
});

await step('keywords', async () => {
  const state = await page.evaluate(() => {
    const node = window.app.graph.getNodeById(4);
    const widget = node.widgets.find((w) => w.name === 'pmg_report');
    const box = widget?.element?.getBoundingClientRect();
    return { type: node.type, text: widget?.element?.value ?? null, visible: !!box && box.width > 50 && box.height > 20 };
  });
  const promptId = await page.evaluate(async () => {
    const history = await (await window.comfyAPI.api.api.fetchApi('/history?max_items=1')).json();
    return Object.keys(history)[0];
  });
  const record = await page.evaluate(async (id) => {
    const history = await (await window.comfyAPI.api.api.fetchApi(`/history/${id}`)).json();
    return history[id]?.outputs?.['4']?.pmg_keywords?.[0] ?? null;
  }, promptId);
  return { ...state, record };
});

await step('upload', async () => {
  await loadWorkflow('pmg_sticker');
  await closeDialogs();
  const loader = 2;
  const before = await page.evaluate((id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'history_file').value, loader);
  // Click the node's "upload history file" button where the canvas draws it.
  async function clickButton(label) {
    const point = await page.evaluate(([id, label]) => {
      const node = window.app.graph.getNodeById(id);
      // Put the node at a known place on screen first (a run may have left the view anywhere).
      window.app.canvas.ds.scale = 1;
      window.app.canvas.ds.offset = [200 - node.pos[0], 200 - node.pos[1]];
      window.app.canvas.draw(true, true);
      const widget = node.widgets.find((w) => w.name === label);
      const y = node.pos[1] + (widget.y ?? widget.last_y) + 10;
      return window.app.canvasPosToClientPos([node.pos[0] + node.size[0] / 2, y]);
    }, [loader, label]);
    choosers.length = 0;
    await page.mouse.click(point[0], point[1]);
    for (let i = 0; i < 50 && !choosers.length; i++) await page.waitForTimeout(200);
    if (!choosers.length) throw new Error(`no file chooser opened after clicking "${label}" at ${point}`);
    return choosers.shift();
  }
  const toastTexts = () => page.evaluate(() => [...document.querySelectorAll('.p-toast-message')].map((t) => ({
    error: t.classList.contains('p-toast-message-error'), text: t.innerText })));
  await page.evaluate(() => window.app.extensionManager.toast.removeAll?.());

  const good = await clickButton('upload history file');
  await good.setFiles(args['good-history']);
  const goodName = path.basename(args['good-history']);
  await page.waitForFunction(([id, name]) => {
    const value = window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'history_file').value;
    return value === name || value.startsWith(name.replace(/\.[^.]+$/, ''));
  }, [loader, goodName], { timeout: 30000 });
  const selected = await page.evaluate((id) => {
    const widget = window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'history_file');
    return { value: widget.value, listed: widget.options.values.includes(widget.value) };
  }, loader);
  await page.waitForTimeout(800);  // toasts fade in
  const goodToasts = await toastTexts();
  await screenshot('history_upload');
  await page.evaluate(() => window.app.extensionManager.toast.removeAll?.());

  const bad = await clickButton('upload history file');
  await bad.setFiles(args['bad-history']);
  await page.waitForSelector('.p-toast-message-error', { timeout: 30000 });
  await page.waitForTimeout(800);
  const badToasts = await toastTexts();
  const afterBad = await page.evaluate((id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'history_file').value, loader);
  await screenshot('history_upload_refused');
  await page.evaluate(() => window.app.extensionManager.toast.removeAll?.());

  // The folder button: a whole folder (a history file beside the images it names).
  let folder = null;
  if (args['good-folder']) {
    const picker = await clickButton('upload history folder');
    await picker.setFiles(args['good-folder']);
    const expected = `${path.basename(args['good-folder'])}/`;
    await page.waitForFunction(([id, prefix]) => window.app.graph.getNodeById(id).widgets
      .find((w) => w.name === 'history_file').value.startsWith(prefix), [loader, expected], { timeout: 30000 });
    folder = await page.evaluate((id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'history_file').value, loader);
    await page.evaluate(() => window.app.extensionManager.toast.removeAll?.());
  }

  // Drag and drop: a history file dropped on the node goes the same way.
  const dropName = `dropped_${Date.now()}${path.extname(args['good-history'])}`;
  const goodText = fs.readFileSync(args['good-history'], 'utf8');
  const dropped = await page.evaluate(async ([id, name, text]) => {
    const node = window.app.graph.getNodeById(id);
    const [x, y] = window.app.canvasPosToClientPos([node.pos[0] + 20, node.pos[1] + 20]);
    const transfer = new DataTransfer();
    transfer.items.add(new File([text], name, { type: 'application/json' }));
    const canvas = window.app.canvasEl;
    canvas.dispatchEvent(new DragEvent('dragover', { dataTransfer: transfer, clientX: x, clientY: y, bubbles: true, cancelable: true }));
    canvas.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, clientX: x, clientY: y, bubbles: true, cancelable: true }));
    const widget = node.widgets.find((w) => w.name === 'history_file');
    for (let i = 0; i < 100 && widget.value !== name; i++) await new Promise((r) => setTimeout(r, 200));
    return widget.value;
  }, [loader, dropName, goodText]);
  return { before, selected, good_toasts: goodToasts, bad_toasts: badToasts, after_bad: afterBad, folder, drop_name: dropName, dropped };
});

await browser.close();
report.timings.total = (Date.now() - t0) / 1000;
fs.writeFileSync(args.out, JSON.stringify(report, null, 2));
