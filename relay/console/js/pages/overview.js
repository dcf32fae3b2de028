// Overview: the last hour or day at a glance, from GET /v1/stats (a tenant's own figures for a
// tenant token).
import { get } from "../api.js";
import { chart } from "../chart.js";
import { badge, clear, h, link, loading, notice, percent, table, when } from "../dom.js";
import { pause } from "./common.js";

export const ms = (v) => (v === null || v === undefined ? "—" : `${v} ms`);

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

function clock(iso, window) {
  const t = iso.slice(11, 16);
  return window === "day" ? `${t}` : t;
}

const labelsOf = (stats) => stats.series.map((p) => clock(p.start, stats.window));

function charts(stats) {
  const labels = labelsOf(stats);
  const step = stats.step_seconds >= 3600 ? "hour" : `${stats.step_seconds / 60} minutes`;
  const t = stats.totals;
  return h(
    "div",
    { class: "charts" },
    chart({
      title: `Events accepted per ${step}`,
      summary: `${t.events_accepted} in total.`,
      labels,
      series: [{ name: "events", values: stats.series.map((p) => p.events_accepted) }],
    }),
    chart({
      title: "Deliveries finished",
      summary: `${t.deliveries.delivered} delivered, ${t.deliveries.failed} failed.`,
      labels,
      series: [
        { name: "delivered", values: stats.series.map((p) => p.deliveries.delivered) },
        { name: "failed", values: stats.series.map((p) => p.deliveries.failed) },
      ],
    }),
    attemptCharts(stats),
  );
}

// The attempts' success rate and latency: the overview's, and a webhook's own on its page.
export function attemptCharts(stats) {
  const labels = labelsOf(stats);
  const t = stats.totals;
  return [
    chart({
      title: "Attempt success rate",
      summary: `${percent(t.success_rate)} over the window.`,
      labels,
      kind: "lines",
      ceiling: 1,
      format: (v) => `${Math.round(v * 100)}%`,
      series: [{ name: "success rate", values: stats.series.map((p) => p.success_rate) }],
    }),
    chart({
      title: "Attempt latency (p50, p95)",
      summary: `p50 ${ms(t.latency_p50_ms)}, p95 ${ms(t.latency_p95_ms)}.`,
      labels,
      kind: "lines",
      format: (v) => `${Math.round(v)} ms`,
      series: [
        { name: "p50", values: stats.series.map((p) => p.latency_p50_ms) },
        { name: "p95", values: stats.series.map((p) => p.latency_p95_ms) },
      ],
    }),
  ];
}

function troubled(webhooks) {
  return table(
    ["Webhook", "Tenant", "State", "Why"],
    webhooks.map((w) => [
      link(`#/webhooks/${encodeURIComponent(w.id)}`, w.url),
      w.tenant_id,
      w.enabled ? badge("failing") : badge("disabled"),
      w.enabled ? ["failing since ", when(w.failing_since)] : (w.disabled_reason ?? "disabled by its owner"),
    ]),
    "No webhook is failing or disabled.",
  );
}

const REFRESH_MS = 10_000;

export async function page(main, { query, signal }) {
  const window = query.get("window") === "day" ? "day" : "hour";
  const body = h("div", {}, loading("Loading figures…"));
  clear(
    main,
    h("h1", {}, "Overview"),
    h(
      "nav",
      { class: "actions", "aria-label": "Time window" },
      ["hour", "day"].map((w) =>
        h("a", { href: `#/overview?window=${w}`, "aria-current": w === window ? "page" : null }, `Last ${w}`),
      ),
    ),
    body,
  );
  // Live figures: read again every few seconds while the page is open and shown.
  while (!signal.aborted) {
    await show(body, window, signal);
    await pause(signal, REFRESH_MS);
  }
}

async function show(body, window, signal) {
  try {
    const stats = (await get("/v1/stats", { window })).data;
    if (signal.aborted) return;
    const t = stats.totals;
    clear(
      body,
      h(
        "div",
        { class: "cards" },
        card("Events accepted", t.events_accepted),
        card("Delivered", t.deliveries.delivered),
        card("Failed", t.deliveries.failed),
        card("Attempt success", percent(t.success_rate)),
        card("Latency p50", ms(t.latency_p50_ms)),
        card("Latency p95", ms(t.latency_p95_ms)),
        card("Backlog (pending)", stats.backlog),
      ),
      h(
        "p",
        { class: "actions" },
        link("#/deliveries?status=failed", "Failed deliveries"),
        link("#/deliveries?status=pending", "Pending deliveries"),
      ),
      charts(stats),
      h("h2", {}, "Webhooks failing or disabled"),
      troubled(stats.webhooks),
      h("p", { class: "muted" }, "Figures from ", when(stats.since), " to ", when(stats.until), "."),
    );
  } catch (err) {
    clear(body, notice("error", err.message));
  }
}
