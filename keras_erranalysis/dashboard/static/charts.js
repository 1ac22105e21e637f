// Small SVG/canvas charts: a line chart, per-class bars, a confusion matrix, a scatter with box selection.
import { el, svg, formatNumber, isolate } from "./dom.js";

function scale([d0, d1], [r0, r1]) {
  const span = d1 - d0 || 1;
  return (value) => r0 + ((value - d0) / span) * (r1 - r0);
}

function extent(values) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return [0, 1];
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  return lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi];
}

function tick(value) {
  return String(+value.toPrecision(3));
}

function short(text, n = 22) {
  const value = String(text);
  return value.length > n ? `${value.slice(0, n)}…` : value;
}

/** A line chart of one or two series over `x`; `marks(point)` colours each dot (true/false). */
export function lineChart(points, { x, series, marks, current, width = 420, height = 150 }) {
  const pad = { left: 46, right: 46, top: 20, bottom: 26 };
  const sx = scale(extent(points.map((p) => p[x])), [pad.left, width - pad.right]);
  const chart = svg("svg", { class: "line-chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis" }));
  for (const p of points) {
    chart.append(svg("text", { x: sx(p[x]), y: height - 8, class: "tick", "text-anchor": "middle" }, String(p[x])));
  }
  if (current !== undefined && current !== null) {
    chart.append(svg("line", { x1: sx(current), x2: sx(current), y1: pad.top, y2: height - pad.bottom, class: "current" }));
  }
  series.forEach((s) => {
    const domain = s.domain || extent(points.map((p) => p[s.key]));
    const sy = scale(domain, [height - pad.bottom, pad.top]);
    const usable = points.filter((p) => Number.isFinite(p[s.key]));
    const path = usable.map((p, i) => `${i ? "L" : "M"}${sx(p[x]).toFixed(1)},${sy(p[s.key]).toFixed(1)}`).join("");
    chart.append(svg("path", { d: path, class: `series ${s.class}` }));
    for (const p of usable) {
      const good = marks ? marks(p) : null;
      chart.append(svg("circle", { cx: sx(p[x]), cy: sy(p[s.key]), r: 3.5,
        class: `dot ${s.class} ${good === true ? "correct" : good === false ? "wrong" : ""}` },
      svg("title", {}, `${s.label} ${formatNumber(p[s.key])} at ${x} ${p[x]}${good === null ? "" : good ? " (correct)" : " (wrong)"}`)));
    }
    const axisX = s.right ? width - pad.right + 4 : pad.left - 4;
    const anchor = s.right ? "start" : "end";
    chart.append(svg("text", { x: axisX, y: pad.top + 8, class: `tick ${s.class}`, "text-anchor": anchor }, formatNumber(domain[1])),
      svg("text", { x: axisX, y: height - pad.bottom, class: `tick ${s.class}`, "text-anchor": anchor }, formatNumber(domain[0])),
      svg("text", { x: s.right ? width - pad.right : pad.left, y: 10, class: `axis-label ${s.class}`,
        "text-anchor": s.right ? "end" : "start" }, s.right ? `${s.label} →` : `← ${s.label}`));
  });
  return chart;
}

/** Grouped horizontal bars (precision, recall, F1) per class; onClick(row) on a bar. */
export function classBars(rows, onClick) {
  const metrics = [["precision", "p"], ["recall", "r"], ["f1", "f"]];
  const bar = 8;
  const rowHeight = metrics.length * bar + 10;
  const left = 190;
  const width = 720;
  const height = rows.length * rowHeight + 30;
  const sx = scale([0, 1], [left, width - 120]);
  const chart = svg("svg", { class: "bars", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  rows.forEach((row, i) => {
    const top = 20 + i * rowHeight;
    chart.append(svg("text", { x: left - 8, y: top + rowHeight / 2, class: "bar-label", "text-anchor": "end" },
      isolate(short(row.name ?? row.class, 26)), svg("title", {}, String(row.name ?? row.class))));
    metrics.forEach(([key, cls], j) => {
      const value = Number.isFinite(row[key]) ? row[key] : 0;
      const rect = svg("rect", { x: left, y: top + j * bar, width: Math.max(1, sx(value) - left), height: bar - 1,
        class: `bar ${cls}`, "data-class": row.class, "data-metric": key },
      svg("title", {}, `${row.name ?? row.class}: ${key} ${formatNumber(row[key])} (support ${row.support})${onClick ? "; click for its examples" : ""}`));
      if (onClick) rect.addEventListener("click", () => onClick(row));
      else rect.classList.add("static");
      chart.append(rect);
    });
    chart.append(svg("text", { x: sx(Math.max(...metrics.map(([key]) => (Number.isFinite(row[key]) ? row[key] : 0)))) + 6, y: top + 2.6 * bar, class: "tick" },
      `F1 ${Number.isFinite(row.f1) ? row.f1.toFixed(2) : "–"} · n=${row.support}`));
  });
  chart.append(svg("text", { x: left, y: 12, class: "legend p" }, "■ precision"),
    svg("text", { x: left + 90, y: 12, class: "legend r" }, "■ recall"),
    svg("text", { x: left + 160, y: 12, class: "legend f" }, "■ F1"));
  return chart;
}

/** The confusion matrix as a table; onClick(rowIndex, columnIndex) on a cell. */
export function confusionTable(labels, matrix, onClick, clickable = () => true) {
  const top = Math.max(1, ...matrix.flat());
  const head = el("tr", {}, el("th", { class: "corner", text: "label ↓ / prediction →" }),
    labels.map((name) => el("th", { class: "pred", title: String(name) }, el("bdi", { dir: "auto", text: short(name, 12) }))));
  const body = matrix.map((row, i) => el("tr", {}, el("th", { title: String(labels[i]) },
    el("bdi", { dir: "auto", text: short(labels[i], 24) })), row.map((count, j) => {
    const share = count ? 0.1 + 0.9 * (Math.log1p(count) / Math.log1p(top)) : 0;
    const hue = i === j ? "31, 119, 180" : "214, 39, 40";
    const td = el("td", { class: `num cell${clickable(i, j) ? " clickable" : ""}`, "data-row": i, "data-col": j,
      style: `background-color: rgba(${hue}, ${share.toFixed(3)})`, title: `${labels[i]} predicted as ${labels[j]}: ${count}` },
    String(count));
    if (clickable(i, j)) td.addEventListener("click", () => onClick(i, j));
    return td;
  })));
  return el("table", { class: "confusion" }, el("thead", {}, head), el("tbody", {}, body));
}

/**
 * A scatter of points {example_id, x, y, correct} on a canvas, with the density of all rows
 * behind it and an SVG layer on top for axes and a drag box. onSelect(ids, box) after a drag.
 */
export function scatter(answer, onSelect, { width = 640, height = 460 } = {}) {
  const pad = { left: 64, right: 16, top: 14, bottom: 40 };
  const points = answer.points || [];
  const density = answer.density || null;
  // Zoom to where the rows are: the non-empty density cells (all rows) and the points.
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  if (density && density.counts && density.x_edges && density.y_edges) {
    density.counts.forEach((row, i) => row.forEach((count, j) => {
      if (!count) return;
      xs.push(density.x_edges[i], density.x_edges[i + 1]);
      ys.push(density.y_edges[j], density.y_edges[j + 1]);
    }));
  }
  const padded = ([lo, hi]) => [lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)];
  const xDomain = padded(extent(xs));
  const yDomain = padded(extent(ys));
  const sx = scale(xDomain, [pad.left, width - pad.right]);
  const sy = scale(yDomain, [height - pad.bottom, pad.top]);
  const ratio = window.devicePixelRatio || 1;
  const canvas = el("canvas", { width: width * ratio, height: height * ratio, style: `width:${width}px;height:${height}px` });
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.save();
  ctx.beginPath();
  ctx.rect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  ctx.clip();
  if (density && density.counts && density.counts.length) {
    const top = Math.max(1, ...density.counts.flat());
    density.counts.forEach((row, i) => row.forEach((count, j) => {
      if (!count) return;
      const x0 = sx(density.x_edges[i]);
      const x1 = sx(density.x_edges[i + 1]);
      const y0 = sy(density.y_edges[j + 1]);
      const y1 = sy(density.y_edges[j]);
      ctx.fillStyle = `rgba(90, 90, 90, ${(0.05 + 0.35 * Math.log1p(count) / Math.log1p(top)).toFixed(3)})`;
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }));
  }
  const radius = points.length > 5000 ? 1.2 : 2.6;
  for (const [good, colour] of [[true, "rgba(31, 119, 180, 0.75)"], [false, "rgba(214, 39, 40, 0.85)"]]) {
    ctx.fillStyle = colour;
    ctx.beginPath();
    for (const p of points) {
      if (Boolean(p.correct) !== good) continue;
      ctx.moveTo(sx(p.x) + radius, sy(p.y));
      ctx.arc(sx(p.x), sy(p.y), radius, 0, 2 * Math.PI);
    }
    ctx.fill();
  }
  ctx.restore();
  const layer = svg("svg", { class: "scatter-layer", width, height, viewBox: `0 0 ${width} ${height}`,
    "data-x-domain": xDomain.join(","), "data-y-domain": yDomain.join(","),
    "data-plot": [pad.left, pad.top, width - pad.right, height - pad.bottom].join(",") });
  layer.append(svg("rect", { x: pad.left, y: pad.top, width: width - pad.left - pad.right,
    height: height - pad.top - pad.bottom, class: "plot-area" }));
  for (let k = 0; k <= 4; k += 1) {
    const xv = xDomain[0] + (k / 4) * (xDomain[1] - xDomain[0]);
    const yv = yDomain[0] + (k / 4) * (yDomain[1] - yDomain[0]);
    layer.append(svg("text", { x: sx(xv), y: height - pad.bottom + 14, class: "tick", "text-anchor": "middle" }, tick(xv)),
      svg("text", { x: pad.left - 4, y: sy(yv) + 3, class: "tick", "text-anchor": "end" }, tick(yv)));
  }
  layer.append(svg("text", { x: (pad.left + width - pad.right) / 2, y: height - 6, class: "axis-label", "text-anchor": "middle" }, String(answer.x_label || "x")),
    svg("text", { x: 12, y: (pad.top + height - pad.bottom) / 2, class: "axis-label", "text-anchor": "middle",
      transform: `rotate(-90 12 ${(pad.top + height - pad.bottom) / 2})` }, String(answer.y_label || "y")));
  const box = svg("rect", { class: "drag-box", visibility: "hidden" });
  layer.append(box);
  const invert = (px, [d0, d1], [r0, r1]) => d0 + ((px - r0) / (r1 - r0)) * (d1 - d0);
  let start = null;
  const position = (event) => {
    const rect = layer.getBoundingClientRect();
    return [Math.min(Math.max(event.clientX - rect.left, pad.left), width - pad.right),
      Math.min(Math.max(event.clientY - rect.top, pad.top), height - pad.bottom)];
  };
  const drawBox = ([x0, y0], [x1, y1]) => {
    box.setAttribute("x", Math.min(x0, x1));
    box.setAttribute("y", Math.min(y0, y1));
    box.setAttribute("width", Math.abs(x1 - x0));
    box.setAttribute("height", Math.abs(y1 - y0));
    box.setAttribute("visibility", "visible");
  };
  layer.addEventListener("mousedown", (event) => {
    event.preventDefault();
    start = position(event);
    drawBox(start, start);
  });
  layer.addEventListener("mousemove", (event) => start && drawBox(start, position(event)));
  const finish = (event) => {
    if (!start) return;
    const end = position(event);
    const begin = start;
    start = null;
    if (Math.abs(end[0] - begin[0]) < 3 || Math.abs(end[1] - begin[1]) < 3) {
      box.setAttribute("visibility", "hidden");
      return;
    }
    const xs = [begin[0], end[0]].map((px) => invert(px, xDomain, [pad.left, width - pad.right])).sort((a, b) => a - b);
    const ys = [begin[1], end[1]].map((px) => invert(px, yDomain, [height - pad.bottom, pad.top])).sort((a, b) => a - b);
    const ids = points.filter((p) => p.x >= xs[0] && p.x <= xs[1] && p.y >= ys[0] && p.y <= ys[1]).map((p) => p.example_id);
    layer.dataset.box = [...xs, ...ys].join(",");
    layer.dataset.selected = String(ids.length);
    onSelect(ids, { x: xs, y: ys });
  };
  layer.addEventListener("mouseup", finish);
  layer.addEventListener("mouseleave", (event) => start && finish(event));
  return el("div", { class: "scatter", style: `width:${width}px;height:${height}px` }, canvas, layer);
}

/** A small histogram (edges, counts) as SVG bars; onClick(lo, hi) on a bar. */
export function histogram(answer, column, onClick, { width = 360, height = 70 } = {}) {
  const edges = answer.edges || [];
  const counts = answer.counts || [];
  const chart = svg("svg", { class: "histogram", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "data-column": column });
  if (!counts.length || edges.length !== counts.length + 1) return chart;
  const top = Math.max(1, ...counts);
  const pad = { left: 4, right: 4, top: 4, bottom: 16 };
  const step = (width - pad.left - pad.right) / counts.length;
  counts.forEach((count, i) => {
    const barHeight = (count / top) * (height - pad.top - pad.bottom);
    const rect = svg("rect", { x: pad.left + i * step + 0.5, y: height - pad.bottom - barHeight, width: Math.max(1, step - 1),
      height: Math.max(count ? 1 : 0, barHeight), class: "hist-bar" },
    svg("title", {}, `${column} ${formatNumber(edges[i])} – ${formatNumber(edges[i + 1])}: ${count} rows; click to keep these`));
    rect.addEventListener("click", () => onClick(edges[i], edges[i + 1]));
    chart.append(rect);
  });
  chart.append(svg("text", { x: pad.left, y: height - 3, class: "tick" }, tick(edges[0])),
    svg("text", { x: width - pad.right, y: height - 3, class: "tick", "text-anchor": "end" }, tick(edges[edges.length - 1])),
    svg("text", { x: width / 2, y: height - 3, class: "tick", "text-anchor": "middle" }, `${column} of the matches`));
  return chart;
}
