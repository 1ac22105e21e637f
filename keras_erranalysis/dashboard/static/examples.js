// Examples view: filters, a sortable page of rows (<= 200, from the server), paging.
import { el, clear, display, isolate, longText, formatNumber } from "./dom.js";
import { histogram } from "./charts.js";

const STANDARD_RANGES = ["loss", "confidence", "margin", "aum"];
const FLAGS = ["likely_mislabeled", "nonfinite"];
const PAGE_SIZES = [50, 100, 200];
const OPEN = 1e300;

/**
 * A page of rows as a table: click a header to sort, a row to open it, "show all" for cut text.
 * `page` is the answer of /examples or /compare.
 */
export function rowsTable(app, page, { sort, order, onSort, onRow }) {
  const columns = visibleColumns(app, page.columns || []);
  const head = el("tr", {}, columns.map((column) => {
    const mark = column === sort ? (order === "asc" ? " ▲" : " ▼") : "";
    const th = el("th", { "data-column": column, class: "sortable", title: `sort by ${column}`,
      "aria-sort": column === sort ? (order === "asc" ? "ascending" : "descending") : null },
    el("bdi", { dir: "auto", text: column }), mark);
    th.addEventListener("click", () => onSort(column));
    return th;
  }));
  const body = (page.rows || []).map((row) => {
    const tr = el("tr", { class: "clickable", "data-id": row.example_id, title: "open in Detail", tabindex: 0 });
    tr.addEventListener("keydown", (event) => event.key === "Enter" && event.target === tr && onRow(row));
    if (row.correct === false) tr.classList.add("wrong");
    for (const column of columns) tr.append(cell(app, row, column));
    tr.addEventListener("click", () => onRow(row));
    return tr;
  });
  return el("table", { class: "rows" }, el("thead", {}, head), el("tbody", {}, body));
}

function cell(app, row, column) {
  const value = row[column];
  const td = el("td", { "data-column": column });
  if (typeof value === "number" || typeof value === "boolean" || value === null) {
    td.dataset.value = String(value);
  }
  const isClass = column === "label" || column === "prediction" || column === "label_other" ||
    column === "prediction_other";
  if (isClass && Number.isInteger(value) && app.run.label_names) {
    td.append(longText(app.labelName(value)));
    return td;
  }
  if (typeof value === "number") td.classList.add("num");
  const loadFull = async () => {
    const example = await app.get("example", { id: row.example_id });
    const fields = example.fields || {};
    return column in fields ? fields[column] : example[column];
  };
  td.append(longText(value, { cut: Boolean(row[`${column}__truncated`]), loadFull }));
  return td;
}

/** The Examples tab. */
export class ExamplesView {
  constructor(app, section) {
    this.app = app;
    this.section = section;
    this.filter = {};
    this.sort = null;
    this.order = "desc";
    this.offset = 0;
    this.limit = 50;
    this.request = 0;
    this.numericColumns = new Set();
    this.filters = el("form", { class: "filters", "aria-label": "filters" });
    this.filters.addEventListener("submit", (event) => event.preventDefault());
    this.summary = el("div", { class: "summary", id: "examples-summary" });
    this.histogramBox = el("div", { class: "histogram-box" });
    this.tableBox = el("div", { class: "table-box" });
    this.pager = el("div", { class: "pager" });
    section.append(this.filters, this.histogramBox, this.summary, this.tableBox, this.pager);
  }

  runChanged() {
    this.filter = {};
    this.sort = null;
    this.offset = 0;
    this.numericColumns = new Set();
  }

  setFilter(filter, sort = null, order = "desc") {
    this.filter = JSON.parse(JSON.stringify(filter));
    if (sort) {
      this.sort = sort;
      this.order = order;
    }
    this.offset = 0;
  }

  /** Called by a control: the filter changed, go back to the first page. */
  changed() {
    this.offset = 0;
    this.load().catch((error) => this.app.fail(error));
  }

  async load() {
    this.renderFilters();
    const request = ++this.request;
    const page = await this.app.get("examples", {
      filter: Object.keys(this.filter).length ? this.filter : null,
      sort: this.sort, order: this.sort ? this.order : null, offset: this.offset, limit: this.limit,
    });
    if (request !== this.request) return; // a newer request answers instead
    for (const row of (page.rows || []).slice(0, 5)) {
      for (const [key, value] of Object.entries(row)) {
        if (typeof value === "number" && key !== "example_id" && !this.numericColumns.has(key)) {
          this.numericColumns.add(key);
          this.rangeAdder && this.fillRangeAdder();
        }
      }
    }
    const end = this.offset + (page.rows || []).length;
    this.summary.dataset.total = String(page.total);
    this.summary.textContent = page.total
      ? `rows ${this.offset + 1}–${end} of ${page.total} matching (${page.n_examples} examples, epoch ${this.app.epoch})`
      : `no row matches (${page.n_examples} examples, epoch ${this.app.epoch})`;
    clear(this.tableBox).append(columnPicker(this.app, page.columns || [], () => this.load()), rowsTable(this.app, page, {
      sort: this.sort, order: this.order,
      onSort: (column) => this.sortBy(column),
      onRow: (row) => this.app.openDetail(row.example_id),
    }));
    this.renderPager(page.total);
    this.renderHistogram(request).catch((error) => this.app.fail(error));
  }

  /** The distribution, among the matches, of the sort column (loss when unsorted). */
  async renderHistogram(request) {
    const column = this.sort && this.numericColumns.has(this.sort) ? this.sort : "loss";
    if (!this.numericColumns.has(column)) return;
    const answer = await this.app.get("histogram", { column, bins: 40,
      filter: Object.keys(this.filter).length ? this.filter : null });
    if (request !== this.request) return;
    clear(this.histogramBox).append(histogram(answer, column, (lo, hi) => {
      this.filter.ranges = { ...(this.filter.ranges || {}), [column]: [lo, hi] };
      this.changed();
    }));
  }

  sortBy(column) {
    if (this.sort === column) this.order = this.order === "asc" ? "desc" : "asc";
    else {
      this.sort = column;
      this.order = "desc";
    }
    this.changed();
  }

  renderPager(total) {
    const last = Math.max(0, Math.floor((total - 1) / this.limit) * this.limit);
    const go = (offset) => () => {
      this.offset = Math.min(Math.max(0, offset), last);
      this.load().catch((error) => this.app.fail(error));
    };
    const size = el("select", { "aria-label": "rows per page" },
      PAGE_SIZES.map((n) => el("option", { value: n, selected: n === this.limit }, `${n} rows`)));
    size.addEventListener("change", () => {
      this.limit = +size.value;
      this.changed();
    });
    clear(this.pager).append(
      el("button", { type: "button", text: "« first", disabled: this.offset === 0, onclick: go(0) }),
      el("button", { type: "button", text: "‹ previous", disabled: this.offset === 0,
        onclick: go(this.offset - this.limit) }),
      el("button", { type: "button", text: "next ›", disabled: this.offset >= last,
        onclick: go(this.offset + this.limit) }),
      el("button", { type: "button", text: "last »", disabled: this.offset >= last, onclick: go(last) }),
      size);
  }

  /** Rebuilds the filter controls from this.filter (which may come from another view). */
  renderFilters() {
    const run = this.app.run;
    const filter = this.filter;
    const form = clear(this.filters);
    const set = (key, value) => {
      const empty = value === undefined || value === null || value === "" ||
        (Array.isArray(value) && !value.length) || (typeof value === "object" && !Array.isArray(value) &&
          !Object.keys(value).length);
      if (empty) delete filter[key];
      else filter[key] = value;
      this.changed();
    };

    const correct = el("select", { name: "correct", "aria-label": "correct" },
      el("option", { value: "" }, "all"), el("option", { value: "true" }, "correct"),
      el("option", { value: "false" }, "wrong"));
    correct.value = filter.correct === undefined ? "" : String(filter.correct);
    correct.addEventListener("change", () => set("correct", correct.value === "" ? null : correct.value === "true"));
    form.append(field("correct", correct));

    if (run.task === "classification") {
      for (const key of ["label", "prediction"]) form.append(field(key, this.classPicker(key, set)));
    }

    const text = el("input", { type: "search", name: "text", placeholder: "text contains…",
      value: filter.text || "" });
    let timer = null;
    text.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => set("text", text.value), 300);
    });
    form.append(field("text", text));

    const flags = el("span", { class: "flags" });
    const chosen = new Set(filter.flags || []);
    for (const flag of FLAGS) {
      const box = el("input", { type: "checkbox", name: `flag-${flag}`, checked: chosen.has(flag) });
      box.addEventListener("change", () => {
        if (box.checked) chosen.add(flag);
        else chosen.delete(flag);
        set("flags", [...chosen]);
      });
      flags.append(el("label", {}, box, flag.replace("_", " ")));
    }
    const others = [...chosen].filter((flag) => !FLAGS.includes(flag));
    const other = el("input", { type: "text", name: "flags-other", placeholder: "health:…, slice:…",
      value: others.join(", "), size: 16 });
    other.addEventListener("change", () => {
      const typed = other.value.split(",").map((flag) => flag.trim()).filter(Boolean);
      set("flags", [...[...chosen].filter((flag) => FLAGS.includes(flag)), ...typed]);
    });
    flags.append(other);
    form.append(field("flags", flags));

    const ranges = filter.ranges || {};
    const rangeBox = el("span", { class: "ranges" });
    const shown = STANDARD_RANGES.filter((column) => (run.columns || []).includes(column) || column in ranges);
    for (const column of Object.keys(ranges)) if (!shown.includes(column)) shown.push(column);
    for (const column of shown) rangeBox.append(this.rangeInputs(column, ranges, set));
    this.rangeAdder = el("select", { name: "range-add", "aria-label": "add a range on a column" });
    this.fillRangeAdder(shown);
    this.rangeAdder.addEventListener("change", () => {
      const column = this.rangeAdder.value;
      if (column) rangeBox.insertBefore(this.rangeInputs(column, ranges, set), this.rangeAdder);
    });
    rangeBox.append(this.rangeAdder);
    form.append(field("ranges", rangeBox));

    const epochs = run.epochs || [];
    if (epochs.length > 1) {
      const changed = filter.changed || {};
      const pick = (name, value) => {
        const select = el("select", { name }, epochs.map((epoch) => el("option", { value: epoch }, epoch)));
        select.value = String(value);
        return select;
      };
      const from = pick("changed-from", changed.from ?? epochs[0]);
      const to = pick("changed-to", changed.to ?? epochs[epochs.length - 1]);
      const kind = el("select", { name: "changed-kind" }, el("option", { value: "" }, "—"),
        el("option", { value: "fixed" }, "fixed"), el("option", { value: "broken" }, "broken"));
      kind.value = changed.kind || "";
      const update = () => set("changed", kind.value ? { from: +from.value, to: +to.value, kind: kind.value } : null);
      for (const select of [from, to, kind]) select.addEventListener("change", update);
      form.append(field("changed between", el("span", {}, from, " → ", to, " ", kind)));
    }

    if (filter.box) {
      const box = filter.box;
      const range = (pair) => pair.map((v) => formatNumber(+(+v).toPrecision(3))).join(" … ");
      form.append(field("box", el("span", { class: "chip" }, `${box.kind === "embedding" ? "embedding" : "data map"}: ` +
        `x ${range(box.x)}, y ${range(box.y)} `,
      el("button", { type: "button", class: "link", text: "× clear", onclick: () => set("box", null) }))));
    }
    if (filter.ids) {
      form.append(field("ids", el("span", { class: "chip" }, `${filter.ids.length} selected examples `,
        el("button", { type: "button", class: "link", text: "× clear", onclick: () => set("ids", null) }))));
    }
    form.append(el("button", { type: "button", class: "reset", text: "reset filters", onclick: () => {
      this.filter = {};
      this.changed();
    } }));
  }

  classPicker(key, set) {
    const names = this.app.run.label_names;
    const chosen = this.filter[key] || [];
    if (!names || !names.length) {
      const input = el("input", { type: "text", name: key, placeholder: "class ids: 0, 3", size: 10,
        value: chosen.join(", ") });
      input.addEventListener("change", () => set(key, input.value.split(",").map((v) => v.trim())
        .filter((v) => v !== "").map(Number).filter(Number.isInteger)));
      return input;
    }
    const select = el("select", { name: key, multiple: true, size: Math.min(4, names.length) },
      names.map((name, index) => el("option", { value: index, selected: chosen.includes(index), title: name },
        `${index}: ${isolate(name.length > 40 ? `${name.slice(0, 40)}…` : name)}`)));
    select.addEventListener("change", () => set(key, [...select.selectedOptions].map((option) => +option.value)));
    return select;
  }

  fillRangeAdder(shown = []) {
    const adder = this.rangeAdder;
    const present = new Set([...(adder.options || [])].map((option) => option.value));
    if (!present.size) adder.append(el("option", { value: "" }, "+ range on…"));
    for (const column of [...this.numericColumns].sort()) {
      if (!present.has(column) && !shown.includes(column) && !STANDARD_RANGES.includes(column)) {
        adder.append(el("option", { value: column }, column));
      }
    }
  }

  rangeInputs(column, ranges, set) {
    const [lo, hi] = ranges[column] || [null, null];
    const open = (value) => value === null || value === undefined || Math.abs(value) >= OPEN;
    const input = (value, side) => el("input", { type: "number", step: "any", size: 6, name: `${column}-${side}`,
      placeholder: side, value: open(value) ? "" : value, "aria-label": `${column} ${side}` });
    const min = input(lo, "min");
    const max = input(hi, "max");
    const update = () => {
      const next = { ...ranges };
      if (min.value === "" && max.value === "") delete next[column];
      else next[column] = [min.value === "" ? null : +min.value, max.value === "" ? null : +max.value]; // null: open
      set("ranges", next);
    };
    min.addEventListener("change", update);
    max.addEventListener("change", update);
    return el("span", { class: "range" }, el("bdi", { text: column }), " ", min, "–", max);
  }
}

/** The columns to show: not hidden, each `<column>_other` of Compare right after its column. */
export function visibleColumns(app, all) {
  const hidden = (column) => app.hiddenColumns.has(column) ||
    (column.endsWith("_other") && app.hiddenColumns.has(column.slice(0, -6)));
  const shown = all.filter((column) => !column.endsWith("__truncated") && !hidden(column));
  const ordered = [];
  for (const column of shown) {
    if (column.endsWith("_other") && shown.includes(column.slice(0, -6))) continue;
    ordered.push(column);
    if (shown.includes(`${column}_other`)) ordered.push(`${column}_other`);
  }
  return ordered;
}

/** A "columns" menu: one checkbox per column; what is unticked is hidden in every table. */
export function columnPicker(app, columns, redraw) {
  const shown = columns.filter((column) => !column.endsWith("__truncated"));
  const boxes = shown.map((column) => {
    const box = el("input", { type: "checkbox", name: `column-${column}`, checked: !app.hiddenColumns.has(column) });
    box.addEventListener("change", () => {
      if (box.checked) app.hiddenColumns.delete(column);
      else app.hiddenColumns.add(column);
      redraw();
    });
    return el("label", {}, box, el("bdi", { text: column }));
  });
  const hidden = shown.filter((column) => app.hiddenColumns.has(column)).length;
  return el("details", { class: "columns" }, el("summary", { text: `columns (${shown.length - hidden} of ${shown.length} shown)` }),
    el("div", { class: "column-list" }, boxes));
}

function field(name, control) {
  return el("label", { class: "field" }, el("span", { class: "field-name", text: name }), control);
}

export { display, formatNumber };
