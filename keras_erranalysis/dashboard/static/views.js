// Metrics, Maps, Why and Compare views.
import { el, clear, isolate, recordTable, userText } from "./dom.js";
import { classBars, confusionTable, scatter } from "./charts.js";
import { columnPicker, rowsTable } from "./examples.js";

const MAX_BARS = 60;
const MAX_IDS = 5000; // ids sent in one URL; a larger box keeps the first MAX_IDS points

export class MetricsView {
  constructor(app, section) {
    this.app = app;
    this.section = section;
  }

  async load() {
    const app = this.app;
    const answer = await app.get("metrics");
    const section = clear(this.section);
    const perClass = [...(answer.per_class || [])];
    // Classes of a classifier filter its examples; token classes of a sequence task do not.
    const opens = app.run.task === "classification";
    const worst = perClass.length > MAX_BARS
      ? perClass.sort((a, b) => (a.f1 ?? 0) - (b.f1 ?? 0)).slice(0, MAX_BARS) : perClass;
    const what = opens ? "Per class (click a bar for its examples)" : "Per token class";
    section.append(el("h3", { text: perClass.length > MAX_BARS
      ? `${what}: the ${MAX_BARS} lowest F1 of ${perClass.length}` : what }));
    section.append(el("div", { class: "chart-box", id: "class-bars" },
      classBars(worst, opens ? (row) => app.openExamples({ label: [row.class] }) : null)));
    const confusion = answer.confusion || { labels: [], matrix: [] };
    if (confusion.matrix && confusion.matrix.length) {
      const classes = confusion.class_ids || confusion.classes || confusion.labels.map((name, index) =>
        (String(name) === "other" && index === confusion.labels.length - 1 && index >= 30 ? null : index));
      section.append(el("h3", { text: opens ? "Confusion matrix (click a cell for its examples)" : "Confusion matrix of tokens" }),
        el("div", { class: "chart-box" }, confusionTable(confusion.labels, confusion.matrix,
          (i, j) => app.openExamples({ label: [classes[i]], prediction: [classes[j]] }),
          (i, j) => opens && classes[i] >= 0 && classes[j] >= 0))); // -1 or null: the capped "other"
    }
  }
}

export class MapsView {
  constructor(app, section) {
    this.app = app;
    this.section = section;
    this.kind = "datamap";
  }

  runChanged() {
    this.kind = "datamap";
  }

  async load() {
    const app = this.app;
    const section = clear(this.section);
    const kinds = el("div", { class: "map-kinds" });
    for (const [kind, label] of [["datamap", "data map (confidence × variability)"], ["embedding", "embedding (2-D projection)"]]) {
      const disabled = kind === "embedding" && !app.run.has_embeddings;
      const radio = el("input", { type: "radio", name: "map-kind", value: kind, checked: kind === this.kind, disabled });
      radio.addEventListener("change", () => {
        this.kind = kind;
        this.load().catch((error) => app.fail(error));
      });
      kinds.append(el("label", { title: disabled ? "this run stores no embeddings" : null }, radio, label));
    }
    const note = el("p", { class: "hint", id: "map-note",
      text: "Drag a box over points to open them in Examples." });
    const box = el("div", { class: "chart-box", id: "map-box" });
    section.append(kinds, note, box);
    const answer = await app.get("map", { kind: this.kind });
    const points = answer.points || [];
    const total = answer.total ?? points.length;
    note.textContent = `${points.length} points shown${total > points.length ? ` (a sample of ${total})` : ""}; ` +
      "the grey squares are the density of all rows. Drag a box over points to open them in Examples.";
    const boxFilter = (app.run.filters || []).includes("box");
    box.append(scatter(answer, (ids, area) => {
      if (!ids.length) {
        note.textContent = "No point inside that box: drag over some points.";
        return;
      }
      if (boxFilter) {
        // Every row inside the box, not only the sampled points drawn.
        app.openExamples({ box: { kind: this.kind, x: area.x, y: area.y } });
        return;
      }
      app.openExamples({ ids: ids.slice(0, MAX_IDS) });
      if (ids.length > MAX_IDS) app.status(`The box holds ${ids.length} points: the first ${MAX_IDS} are shown.`);
    }));
  }
}

export class WhyView {
  constructor(app, section) {
    this.app = app;
    this.section = section;
  }

  async load() {
    const app = this.app;
    const answer = await app.get("why");
    const section = clear(this.section);
    const features = answer.features || [];
    const slices = answer.slices || [];
    section.append(el("h3", { text: "Features: wrong against correct examples (click a row for its wrong examples, sorted by it)" }));
    section.append(features.length ? recordTable(features, { skip: ["filter"], rowTitle: "open its examples",
      onRow: (row) => {
        const feature = row.feature ?? row.name;
        const sortable = (app.run.columns || []).includes(feature);
        app.openExamples(row.filter || { correct: false }, sortable ? feature : null, "desc");
      } }) : el("p", { class: "hint", text: "No feature comparison stored for this epoch." }));
    section.append(el("h3", { text: "Slices (click a row for its examples)" }));
    section.append(slices.length ? recordTable(slices, { skip: ["filter"], rowTitle: "open its examples",
      onRow: (row) => app.openExamples(row.filter || (row.name !== undefined ? { flags: [`slice:${row.name}`] } : {})) })
      : el("p", { class: "hint", text: "No slice stored for this epoch." }));
  }
}

export class CompareView {
  constructor(app, section) {
    this.app = app;
    this.section = section;
    this.other = null;
    this.sort = null;
    this.order = "desc";
    this.offset = 0;
    this.limit = 50;
  }

  runChanged() {
    this.other = null;
    this.offset = 0;
    this.change = "";
  }

  async load() {
    const app = this.app;
    const section = clear(this.section);
    const others = app.runs.filter((run) => run.run !== app.run.run);
    if (!others.length) {
      section.append(el("p", { class: "hint", text: "Only one run under this logdir: nothing to compare with. " +
        "Point TensorBoard at a folder holding several runs." }));
      return;
    }
    if (!this.other || !others.some((run) => run.run === this.other)) this.other = others[0].run;
    const pick = el("select", { id: "compare-run" }, others.map((run) => el("option", { value: run.run }, isolate(run.run))));
    pick.value = this.other;
    pick.addEventListener("change", () => {
      this.other = pick.value;
      this.offset = 0;
      this.load().catch((error) => app.fail(error));
    });
    const filter = app.views.examples.filter;
    const summary = el("div", { class: "summary", id: "compare-summary" });
    const change = el("select", { id: "compare-change", "aria-label": "change" },
      [["", "all rows"], ["fixed", "fixed (right here, wrong there)"], ["broken", "broken (wrong here, right there)"],
        ["same", "same outcome"]].map(([value, label]) => el("option", { value }, label)));
    change.value = this.change || "";
    change.addEventListener("change", () => {
      this.change = change.value;
      this.offset = 0;
      this.load().catch((error) => app.fail(error));
    });
    const byChange = el("button", { type: "button", class: "link", text: "sort by loss change",
      onclick: () => {
        this.order = this.sort === "loss_change" && this.order === "desc" ? "asc" : "desc";
        this.sort = "loss_change";
        this.offset = 0;
        this.load().catch((error) => app.fail(error));
      } });
    section.append(el("div", { class: "compare-head" }, el("label", {}, "compare ", userText(app.run.run), " with ", pick),
      " ", change, " ", byChange),
      el("p", { class: "hint", text: Object.keys(filter).length
        ? "The Examples tab's filter applies here too." : "Rows joined on example id; filter them in Examples." }),
      summary);
    const page = await app.get("compare", { other: this.other, change: this.change || null,
      filter: Object.keys(filter).length ? filter : null,
      sort: this.sort, order: this.sort ? this.order : null, offset: this.offset, limit: this.limit });
    // What changed first, then the text, then everything else.
    const first = ["example_id", "changed", "correct", "loss", "label", "prediction", "input_text"];
    const columns = page.columns || [];
    page.columns = [...first.filter((c) => columns.includes(c)), ...columns.filter((c) => !first.includes(c))];
    summary.dataset.total = String(page.total);
    summary.textContent = `rows ${page.total ? this.offset + 1 : 0}–${this.offset + (page.rows || []).length} of ` +
      `${page.total}${page.other_epoch !== undefined ? ` (the other run at epoch ${page.other_epoch})` : ""}` +
      (this.sort === "loss_change" ? `, sorted by loss change ${this.order === "desc" ? "▼" : "▲"}` : "");
    const go = (offset) => () => {
      this.offset = Math.max(0, offset);
      this.load().catch((error) => app.fail(error));
    };
    section.append(columnPicker(app, page.columns || [], () => this.load().catch((error) => app.fail(error))),
      el("div", { class: "table-box" }, rowsTable(app, page, { sort: this.sort, order: this.order,
      onSort: (column) => {
        this.order = this.sort === column && this.order === "desc" ? "asc" : "desc";
        this.sort = column;
        this.offset = 0;
        this.load().catch((error) => app.fail(error));
      },
      onRow: (row) => app.openDetail(row.example_id) })),
    el("div", { class: "pager" },
      el("button", { type: "button", text: "‹ previous", disabled: this.offset === 0, onclick: go(this.offset - this.limit) }),
      el("button", { type: "button", text: "next ›", disabled: this.offset + this.limit >= page.total,
        onclick: go(this.offset + this.limit) })));
  }
}
