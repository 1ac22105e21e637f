// Detail view: one example in full (decoded texts, per-token table, heatmaps, trajectory, neighbours).
import { el, clear, svg, userText, longText, display, formatNumber, recordTable } from "./dom.js";
import { lineChart } from "./charts.js";

export class DetailView {
  constructor(app, section) {
    this.app = app;
    this.section = section;
    this.exampleId = null;
    this.request = 0;
  }

  runChanged() {
    this.exampleId = null;
  }

  async load() {
    const section = this.section;
    if (this.exampleId === null) {
      clear(section).append(el("p", { class: "hint", text: "Click a row in Examples to open it here." }));
      return;
    }
    const request = ++this.request;
    const example = await this.app.get("example", { id: this.exampleId });
    if (request !== this.request) return;
    const app = this.app;
    clear(section).dataset.id = String(example.example_id);
    section.append(el("h2", {}, "Example ", userText(example.example_id), ` at epoch ${app.epoch} `,
      el("button", { type: "button", class: "link", text: "← back to Examples", onclick: () => app.show("examples") })));
    const texts = el("dl", { class: "texts" });
    const names = [["input", "input_text"], ["label", "label_text"], ["prediction (teacher-forced)", "prediction_text"],
      ["generated", "generated_text"]];
    for (const [name, key] of names) {
      if (example[key] === null || example[key] === undefined) continue;
      texts.append(el("dt", { text: name }), el("dd", { class: `text ${key}` }, longText(example[key], { block: true })));
    }
    section.append(texts);

    const tokens = example.tokens || [];
    if (tokens.length) section.append(el("h3", { text: `Tokens (${tokens.length})` }), tokenTable(tokens));

    const trajectory = example.trajectory || [];
    if (trajectory.length) {
      section.append(el("h3", { text: "Across epochs" }), trajectoryChart(trajectory, app.epoch),
        recordTable(trajectory));
    }

    const heatmaps = (example.heatmaps || []).filter((map) => typeof map.url === "string" && map.url.startsWith("./image?"));
    if (heatmaps.length) {
      section.append(el("h3", { text: "Heatmaps" }), el("div", { class: "heatmaps" }, heatmaps.map((map) =>
        el("figure", {}, el("img", { src: map.url, alt: String(map.name), loading: "lazy" }),
          el("figcaption", {}, userText(map.name), ` (epoch ${map.epoch})`)))));
    }

    const neighbors = example.neighbors || [];
    if (neighbors.length) {
      const more = el("button", { type: "button", id: "more-like-this", text: "more like this → Examples",
        onclick: () => app.openExamples({ ids: [example.example_id, ...neighbors.map((n) => n.example_id)] }) });
      section.append(el("h3", {}, "Nearest examples (embedding) ", more),
        recordTable(neighbors, { onRow: (row) => app.openDetail(row.example_id), rowTitle: "open" }));
    }

    const fields = example.fields || {};
    section.append(el("details", { class: "all-fields" }, el("summary", { text: `All fields (${Object.keys(fields).length})` }),
      el("table", { class: "fields" }, el("tbody", {},
        Object.entries(fields).map(([key, value]) => el("tr", {}, el("th", {}, userText(key)),
          el("td", { class: typeof value === "number" ? "num" : null }, longText(value))))))));
  }
}

/** The per-token table; the loss column is coloured by its size. */
function tokenTable(tokens) {
  const losses = tokens.map((t) => (Number.isFinite(t.loss) ? t.loss : 0));
  const top = Math.max(...losses, 1e-9);
  const head = el("tr", {}, ["position", "input", "label", "prediction", "loss", "counted"].map((n) => el("th", { text: n })));
  const rows = tokens.map((token) => {
    const wrong = token.counted && token.label !== token.prediction;
    const share = Number.isFinite(token.loss) ? Math.min(1, Math.max(0, token.loss / top)) : 1;
    const loss = el("td", { class: "num loss", "data-value": String(token.loss),
      style: `background-color: rgba(214, 39, 40, ${(0.08 + 0.8 * share).toFixed(3)})` }, display(token.loss));
    return el("tr", { class: [token.counted ? "" : "uncounted", wrong ? "wrong" : ""].join(" ").trim() || null },
      el("td", { class: "num" }, display(token.position)), el("td", {}, longText(token.input)),
      el("td", {}, longText(token.label)), el("td", {}, longText(token.prediction)), loss,
      el("td", { text: token.counted ? "yes" : "no" }));
  });
  return el("table", { class: "tokens" }, el("thead", {}, head), el("tbody", {}, rows));
}

/** Loss (left axis) and confidence (right axis, 0..1) per epoch; dots green when correct. */
function trajectoryChart(points, current) {
  return lineChart(points, {
    x: "epoch",
    series: [{ key: "loss", label: "loss", class: "loss" }, { key: "confidence", label: "confidence",
      class: "confidence", domain: [0, 1], right: true }],
    marks: (point) => point.correct,
    current,
  });
}

export { svg, formatNumber };
