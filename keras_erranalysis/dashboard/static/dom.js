// DOM helpers of the Error Analysis dashboard. User text only ever goes through textContent
// (or an attribute value): never innerHTML, never a template string parsed as markup.

const SVG_NS = "http://www.w3.org/2000/svg";
export const CELL_CHARS = 200; // longer strings are cut here, with a "show all"

/** Creates an HTML element: el("td", {class: "x", title: "t"}, child, "text", ...). */
export function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** Creates an SVG element (attributes set with setAttribute, text as text nodes). */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "text") {
      node.textContent = String(value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Removes every child of a node. */
export function clear(node) {
  node.replaceChildren();
  return node;
}

/** User text, isolated from its neighbours (a right-to-left override stays inside). */
export function userText(value) {
  return el("bdi", { dir: "auto" }, display(value));
}

/**
 * Text in first-strong isolates (U+2068 ... U+2069), for places that hold no element, such as
 * <option> and SVG <text>: a right-to-left override inside cannot reorder what surrounds it.
 */
export function isolate(value) {
  return `\u2068${display(value)}\u2069`;
}

/** How a cell value reads: numbers rounded, booleans as yes/no, null as an empty string. */
export function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return formatNumber(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function formatNumber(value) {
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  return size !== 0 && (size < 1e-3 || size >= 1e6) ? value.toExponential(2) : value.toFixed(4);
}

/**
 * A block of possibly long user text: the first CELL_CHARS characters, then "show all".
 * `loadFull` (optional) returns a promise of the whole text when the server cut it.
 */
export function longText(value, { cut = false, loadFull = null, block = false } = {}) {
  const text = display(value);
  // Only long values may break anywhere: short ones keep their words whole in narrow columns.
  const holder = el(block ? "div" : "span", { class: `long${block ? " block" : ""}${text.length > 40 ? " breakable" : ""}` });
  const short = text.length > CELL_CHARS ? text.slice(0, CELL_CHARS) : text;
  const isCut = cut || short.length < text.length;
  holder.append(userText(isCut ? short + "…" : text));
  if (!isCut) return holder;
  if (cut && !loadFull) {
    holder.title = "cut by the server at 200 characters";
    return holder;
  }
  const button = el("button", { class: "link show-all", type: "button", text: "show all" });
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    button.disabled = true;
    let full = text;
    try {
      if (cut && loadFull) full = display(await loadFull());
    } catch (error) {
      button.disabled = false;
      button.textContent = `show all (failed: ${error.message})`;
      return;
    }
    const whole = el("div", { class: "full-text" }, userText(full));
    const less = el("button", { class: "link show-less", type: "button", text: "show less" });
    less.addEventListener("click", (e) => {
      e.stopPropagation();
      holder.replaceWith(longText(value, { cut, loadFull, block }));
    });
    holder.replaceChildren(whole, el("span", { class: "chars", text: `${full.length} characters ` }), less);
  });
  holder.append(" ", button);
  return holder;
}

/** An error a route answered with ({"error": ...}) or a failed request. */
export class ApiError extends Error {}

/** GET ./route?params as JSON; objects in params are sent as JSON strings. */
export async function getJson(route, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    query.set(key, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  const response = await fetch(`./${route}?${query}`, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    throw new ApiError(`${route}: HTTP ${response.status}, the answer is not JSON`);
  }
  if (!response.ok || (body && body.error)) {
    throw new ApiError(`${route}: ${(body && body.error) || `HTTP ${response.status}`}`);
  }
  return body;
}

/** A small generic table of records (keys of the first rows as columns). */
export function recordTable(rows, { skip = [], onRow = null, rowTitle = "" } = {}) {
  const keys = [];
  for (const row of rows.slice(0, 50)) {
    for (const key of Object.keys(row)) {
      if (!keys.includes(key) && !skip.includes(key) && !key.endsWith("__truncated")) keys.push(key);
    }
  }
  const head = el("tr", {}, keys.map((key) => el("th", {}, userText(key))));
  const body = rows.map((row, index) => {
    const tr = el("tr", { class: onRow ? "clickable" : null, title: onRow ? rowTitle : null, "data-index": index },
      keys.map((key) => el("td", { class: typeof row[key] === "number" ? "num" : null },
        longText(row[key], { cut: Boolean(row[`${key}__truncated`]) }))));
    if (onRow) tr.addEventListener("click", () => onRow(row, index));
    return tr;
  });
  return el("div", { class: "table-box" },
    el("table", { class: "records" }, el("thead", {}, head), el("tbody", {}, body)));
}
