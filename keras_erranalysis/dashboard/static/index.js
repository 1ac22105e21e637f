// Error Analysis dashboard: the ES module TensorBoard loads in the plugin's iframe.
// TensorBoard calls render(); routes are fetched relative to the iframe (./runs, ./examples ...).
import { el, clear, getJson, isolate, userText } from "./static/dom.js";
import { ExamplesView } from "./static/examples.js";
import { DetailView } from "./static/detail.js";
import { MetricsView, MapsView, WhyView, CompareView } from "./static/views.js";

const TABS = [
  ["examples", "Examples", ExamplesView],
  ["detail", "Detail", DetailView],
  ["metrics", "Metrics", MetricsView],
  ["maps", "Maps", MapsView],
  ["why", "Why", WhyView],
  ["compare", "Compare", CompareView],
];

/** The dashboard's state and the links between views. */
class App {
  constructor(root) {
    this.root = root;
    this.runs = [];
    this.run = null; // the entry of /runs being shown
    this.epoch = null;
    this.pending = 0;
    this.views = {};
    this.current = "examples";
    this.hiddenColumns = new Set();
  }

  /** GET a route of the plugin (run and epoch added), counting requests in flight. */
  async get(route, params = {}) {
    this.setPending(+1);
    try {
      return await getJson(route, { run: this.run && this.run.run, epoch: this.epoch, ...params });
    } finally {
      this.setPending(-1);
    }
  }

  setPending(delta) {
    this.pending += delta;
    document.documentElement.dataset.pending = String(this.pending);
  }

  /** Shows a message in the status line (errors in red); never on the console. */
  status(message, isError = false) {
    this.statusLine.className = isError ? "status error" : "status";
    this.statusLine.textContent = message;
  }

  fail(error) {
    this.status(String(error && error.message ? error.message : error), true);
  }

  async start() {
    const head = el("header", { class: "top" });
    this.runSelect = el("select", { id: "run-select", "aria-label": "run" });
    this.runSelect.addEventListener("change", () => this.selectRun(this.runSelect.value));
    this.epochSlider = el("input", { id: "epoch-slider", type: "range", min: 0, max: 0, step: 1, value: 0,
      "aria-label": "epoch" });
    this.epochLabel = el("span", { id: "epoch-label", class: "epoch-label" });
    this.epochSlider.addEventListener("input", () => this.showEpochLabel());
    this.epochSlider.addEventListener("change", () => this.selectEpoch(this.run.epochs[+this.epochSlider.value]));
    this.tabBar = el("nav", { class: "tabs", role: "tablist" }, TABS.map(([key, label]) =>
      el("button", { type: "button", role: "tab", class: "tab", "data-tab": key, text: label,
        onclick: () => this.show(key) })));
    this.runInfo = el("span", { class: "run-info" });
    head.append(el("strong", { class: "title", text: "Error Analysis" }),
      el("label", {}, "run ", this.runSelect), this.runInfo,
      el("label", { class: "epoch" }, "epoch ", this.epochSlider, this.epochLabel), this.tabBar);
    this.statusLine = el("div", { class: "status", role: "status" });
    this.main = el("main");
    clear(this.root).append(head, this.statusLine, this.main);
    for (const [key, , View] of TABS) {
      const section = el("section", { class: "view", "data-view": key, hidden: true });
      this.main.append(section);
      this.views[key] = new View(this, section);
    }
    try {
      const answer = await getJson("runs");
      this.runs = answer.runs || [];
    } catch (error) {
      this.fail(error);
      return;
    }
    if (!this.runs.length) {
      this.status("No run folder of keras_erranalysis under this logdir: train with the " +
        "ErrorAnalysis callback (log_dir=...) or point TensorBoard's --logdir at a run folder.", true);
      return;
    }
    for (const run of this.runs) this.runSelect.append(el("option", { value: run.run }, isolate(run.run || ".")));
    this.selectRun(this.runs[0].run);
  }

  selectRun(name) {
    this.run = this.runs.find((run) => run.run === name) || this.runs[0];
    this.runSelect.value = this.run.run;
    const epochs = this.run.epochs || [];
    this.epochSlider.max = String(Math.max(epochs.length - 1, 0));
    this.epochSlider.value = String(Math.max(epochs.length - 1, 0));
    this.epochSlider.disabled = epochs.length < 2;
    this.epoch = epochs.length ? epochs[epochs.length - 1] : null;
    this.showEpochLabel();
    // Columns most people skip at first; the "columns" menu shows them again.
    this.hiddenColumns = new Set(["loss_sum", "loss_mean", "true_prob", "mean_true_prob", "nonfinite",
      "input_text_other", "label_other", "label_text_other"]); // the same example in both runs
    if (this.run.label_names) ["label_text", "prediction_text"].forEach((c) => this.hiddenColumns.add(c));
    clear(this.runInfo).append(`${this.run.task}, ${this.run.n_examples} examples`);
    for (const view of Object.values(this.views)) view.runChanged && view.runChanged();
    this.show(this.current, true);
  }

  showEpochLabel() {
    const epochs = (this.run && this.run.epochs) || [];
    const epoch = epochs[+this.epochSlider.value];
    this.epochLabel.textContent = epoch === undefined ? "–" : `${epoch} of ${epochs[epochs.length - 1]}`;
  }

  selectEpoch(epoch) {
    if (epoch === this.epoch) return;
    this.epoch = epoch;
    this.epochSlider.value = String(this.run.epochs.indexOf(epoch));
    this.showEpochLabel();
    for (const view of Object.values(this.views)) view.stale = true;
    this.show(this.current, true);
  }

  /** Switches to a tab; reloads it when asked or when its data is stale. */
  show(key, reload = false) {
    this.current = key;
    document.documentElement.dataset.view = key;
    for (const button of this.tabBar.children) button.setAttribute("aria-selected", String(button.dataset.tab === key));
    for (const [name, view] of Object.entries(this.views)) view.section.hidden = name !== key;
    const view = this.views[key];
    if (reload || view.stale || !view.loaded) {
      view.stale = false;
      view.loaded = true;
      this.status("");
      Promise.resolve(view.load()).catch((error) => this.fail(error));
    }
  }

  /** Opens Examples with a filter (a metrics click, a map selection, a slice, "more like this"). */
  openExamples(filter, sort = null, order = "desc") {
    this.views.examples.setFilter(filter || {}, sort, order);
    this.show("examples", true);
  }

  openDetail(exampleId) {
    this.views.detail.exampleId = exampleId;
    this.show("detail", true);
  }

  labelName(value) {
    const names = this.run && this.run.label_names;
    return names && Number.isInteger(value) && names[value] !== undefined ? names[value] : value;
  }
}

/** Entry point called by TensorBoard: builds the dashboard in document.body. */
export async function render() {
  const style = el("link", { rel: "stylesheet", href: new URL("./static/dashboard.css", import.meta.url).href });
  document.head.append(style);
  document.title = "Error Analysis";
  const root = el("div", { class: "erranalysis" });
  document.body.append(root);
  const app = new App(root);
  window.erranalysis = app; // for the browser test and for debugging
  await app.start();
  return app;
}

export { userText };
