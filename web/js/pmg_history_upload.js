// PMG User History Loader: upload buttons and a drop target for history files.
//
// A history file (.jsonl .csv .json .txt .inter), a .zip of one with the images it names,
// or a whole folder goes to POST /pmg/history/upload (nodes/history_upload_route.py), which
// checks it with the loader before anything is stored in ComfyUI's input folder. On success
// the combo lists are refreshed (as pressing R does) and the new file is selected; a refused
// file shows the loader's message in an error toast and nothing is stored.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "PMGUserHistoryLoader";
const WIDGET = "history_file";
const ACCEPT = ".jsonl,.csv,.json,.txt,.inter,.zip";
const UPLOADABLE = /\.(jsonl|csv|json|txt|inter|zip)$/i;

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast) toast.add({ severity, summary, detail, life: severity === "error" ? 15000 : 4000 });
  else if (severity === "error") alert(`${summary}\n\n${detail}`);
}

// files: [{file, path}] where path is the file's place inside a folder ("" for a single file).
async function upload(node, files) {
  const form = new FormData();
  for (const { file, path } of files) {
    if (path) form.append("path", path);
    form.append("file", file, file.name);
  }
  let body;
  try {
    const response = await api.fetchApi("/pmg/history/upload", { method: "POST", body: form });
    body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  } catch (error) {
    notify("error", "History file refused", String(error.message || error));
    return false;
  }
  await app.refreshComboInNodes();
  const widget = node.widgets?.find((w) => w.name === WIDGET);
  if (widget) {
    if (!widget.options.values.includes(body.name)) widget.options.values.push(body.name);
    widget.value = body.name;
    widget.callback?.(body.name);
  }
  node.setDirtyCanvas?.(true, true);
  notify("success", "History file uploaded", `${body.name}: ${body.users} user(s) (first: ${body.first_user}), ${body.format}`);
  return true;
}

function pick(node, directory) {
  const input = document.createElement("input");
  input.type = "file";
  input.style.display = "none";
  if (directory) input.webkitdirectory = true;
  else input.accept = ACCEPT;
  input.onchange = async () => {
    const chosen = [...input.files];
    input.remove();
    if (!chosen.length) return;
    await upload(node, chosen.map((file) => ({ file, path: directory ? file.webkitRelativePath : "" })));
  };
  document.body.append(input);
  input.click();
}

// A dropped folder arrives as a directory entry; walk it (readEntries returns batches).
async function folderFiles(entry, prefix = "") {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    return [{ file, path: prefix + entry.name }];
  }
  const reader = entry.createReader();
  const found = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    for (const child of batch) found.push(...(await folderFiles(child, `${prefix}${entry.name}/`)));
  }
  return found;
}

function addUploadTargets(node) {
  for (const [label, directory] of [["upload history file", false], ["upload history folder", true]]) {
    const button = node.addWidget("button", label, null, () => pick(node, directory), { serialize: false });
    button.label = label;
    button.serialize = false;
  }
  node.onDragOver = (event) => [...(event?.dataTransfer?.items ?? [])].some((item) => item.kind === "file");
  node.onDragDrop = (event) => {
    // Entries must be taken while the drop event is being dispatched, before any await.
    const entries = [...(event.dataTransfer?.items ?? [])].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    const files = [...(event.dataTransfer?.files ?? [])];
    const folder = entries.find((entry) => entry.isDirectory);
    if (!folder && !files.some((file) => UPLOADABLE.test(file.name))) return false;
    return (async () => {
      const picked = folder ? await folderFiles(folder) : [{ file: files.find((f) => UPLOADABLE.test(f.name)), path: "" }];
      await upload(node, picked);
      return true;
    })();
  };
}

app.registerExtension({
  name: "pmg.HistoryUpload",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      addUploadTargets(this);
      return result;
    };
  },
});

// For tests and other extensions: upload File objects to a loader node as the button does.
window.pmgHistoryUpload = { upload };
