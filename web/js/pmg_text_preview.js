// Shows a PMG node's text report on the node after a run (the stock front end only does
// this for its own Preview Any node). PMG Preference Extractor reports the user's
// preference and target keywords; PMG Soft Prompt Trainer its training summary. Both send
// them as the node's UI output `text` (nodes/llm_nodes.py keywords_ui).
import { app } from "../../../scripts/app.js";

const NODE_TYPES = new Set(["PMGPreferenceExtractor", "PMGSoftPromptTrainer"]);
const WIDGET = "pmg_report";

function addReport(node) {
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.placeholder = "keywords appear here after a run";
  area.className = "comfy-multiline-input pmg-report";
  area.style.fontSize = "11px";
  const widget = node.addDOMWidget(WIDGET, "customtext", area, {
    serialize: false,  // a report, not an input: it never enters the workflow or the prompt
    getMinHeight: () => 84,  // room for the user, preference, target and prompt lines
    getValue: () => area.value,
    setValue: (value) => { area.value = value; },
  });
  widget.serialize = false;
  return widget;
}

app.registerExtension({
  name: "pmg.TextPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      addReport(this);
      return result;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      executed?.apply(this, arguments);
      const text = output?.text?.[0];
      const widget = this.widgets?.find((w) => w.name === WIDGET);
      if (widget && typeof text === "string") {
        widget.element.value = text;
        // Grow the node (never shrink it) so the report is readable without resizing by hand.
        const [width, height] = this.computeSize();
        this.setSize([Math.max(this.size[0], width), Math.max(this.size[1], height)]);
        this.setDirtyCanvas?.(true, true);
      }
    };
  },
});
