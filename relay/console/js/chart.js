// Small SVG charts drawn from numbers: bars for counts, lines for rates and latencies.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 320;
const H = 130;
const PAD = { left: 48, right: 6, top: 8, bottom: 20 };
const COLOURS = ["#0b5cad", "#d4761c", "#c2261c"];

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}

// `series`: [{name, values: [number|null]}]; `labels`: one per value; `format`: axis text.
export function chart({ title, summary, labels, series, kind = "bars", format = String, ceiling }) {
  const values = series.flatMap((s) => s.values).filter((v) => v !== null);
  const top = ceiling ?? Math.max(1, ...values);
  const n = labels.length;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (plotW * (i + 0.5)) / n;
  const y = (v) => PAD.top + plotH - (plotH * v) / top;
  const body = [
    svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }),
    svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: y(top), y2: y(top), "stroke-dasharray": "2 3" }),
    svg("text", { class: "tick", x: PAD.left - 4, y: y(top) + 4, "text-anchor": "end" }, format(top)),
    svg("text", { class: "tick", x: PAD.left - 4, y: y(0), "text-anchor": "end" }, format(0)),
    svg("text", { class: "tick", x: PAD.left, y: H - 4 }, labels[0] ?? ""),
    svg("text", { class: "tick", x: W - PAD.right, y: H - 4, "text-anchor": "end" }, labels[n - 1] ?? ""),
  ];
  // Each point says its value in a readout while the pointer is on it or the keyboard's focus
  // is (Tab moves from point to point), and in a tooltip.
  const point = (mark, i, s, v, at) => {
    const text = `${labels[i]}: ${s.name} ${format(v)}`;
    const g = svg("g", { class: "point", tabindex: 0, "aria-label": text }, mark, svg("title", {}, text));
    g.dataset.x = Math.min(Math.max(at.x, PAD.left + 60), W - 60);
    g.dataset.y = Math.max(at.y - 6, PAD.top + 8);
    return g;
  };
  const marks = [];
  const labelled = [];
  series.forEach((s, k) => {
    const colour = COLOURS[k % COLOURS.length];
    if (kind === "bars") {
      const bw = Math.max(1, (plotW / n) * (0.8 / series.length));
      s.values.forEach((v, i) => {
        if (!v) return;
        const left = x(i) - (bw * series.length) / 2 + bw * k;
        const bar = svg("rect", { x: left, y: y(v), width: bw, height: y(0) - y(v), fill: colour });
        labelled.push(point(bar, i, s, v, { x: left + bw / 2, y: y(v) }));
      });
    } else {
      const points = s.values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`));
      let run = [];
      for (const p of [...points, null]) {
        if (p) run.push(p);
        else if (run.length) {
          marks.push(svg("polyline", { points: run.join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
          run = [];
        }
      }
      s.values.forEach((v, i) => {
        if (v === null) return;
        const dot = svg("circle", { cx: x(i), cy: y(v), r: 2.5, fill: colour });
        labelled.push(point(dot, i, s, v, { x: x(i), y: y(v) }));
      });
    }
  });
  // The readout last, so that no mark covers it.
  const readout = svg("text", { class: "readout", "text-anchor": "middle", visibility: "hidden" });
  body.push(...marks, ...labelled, readout);
  const picture = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. ${summary}` }, ...body);
  const show = (e) => {
    const g = e.target.closest?.(".point");
    if (!g) return;
    readout.textContent = g.getAttribute("aria-label");
    readout.setAttribute("x", g.dataset.x);
    readout.setAttribute("y", g.dataset.y);
    readout.setAttribute("visibility", "visible");
  };
  const hide = () => readout.setAttribute("visibility", "hidden");
  picture.addEventListener("pointerover", show);
  picture.addEventListener("focusin", show);
  picture.addEventListener("pointerout", hide);
  picture.addEventListener("focusout", hide);
  const legend =
    series.length > 1
      ? h("div", { class: "legend" }, series.map((s, k) => h("span", {}, h("span", { class: `swatch s${k}` }), s.name)))
      : null;
  return h("figure", { class: "chart" }, h("figcaption", {}, title), picture, legend);
}
