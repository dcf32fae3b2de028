// A webhook's own figures on its page: how its attempts went over the last hour or day, charted,
// from GET /v1/stats?webhook_id=.
import { get } from "../api.js";
import { clear, h, loading, notice, percent } from "../dom.js";
import { attemptCharts, ms } from "./overview.js";

const WINDOWS = ["hour", "day"];

function told(stats) {
  const t = stats.totals;
  const finished = `${t.deliveries.delivered} deliveries delivered, ${t.deliveries.failed} failed; ${stats.backlog} pending.`;
  if (!t.attempts) return `No attempts in the last ${stats.window}. ${finished}`;
  return (
    `${percent(t.success_rate)} of ${t.attempts} attempts in the last ${stats.window} succeeded; ` +
    `latency p50 ${ms(t.latency_p50_ms)}, p95 ${ms(t.latency_p95_ms)}. ${finished}`
  );
}

export function webhookFigures(webhookId) {
  const body = h("div", {}, loading("Loading this webhook's figures…"));
  const buttons = WINDOWS.map((w) => h("button", { type: "button", "aria-pressed": "false" }, `Last ${w}`));
  const show = async (window) => {
    buttons.forEach((b, i) => b.setAttribute("aria-pressed", String(WINDOWS[i] === window)));
    try {
      const stats = (await get("/v1/stats", { webhook_id: webhookId, window })).data;
      clear(body, h("p", { role: "status" }, told(stats)), h("div", { class: "charts" }, attemptCharts(stats)));
    } catch (err) {
      clear(body, notice("error", err.message));
    }
  };
  buttons.forEach((b, i) => b.addEventListener("click", () => show(WINDOWS[i])));
  show(WINDOWS[0]);
  return h(
    "section",
    { class: "panel", "aria-labelledby": "figures-title" },
    h("h2", { id: "figures-title" }, "Success rate and latency"),
    h("div", { class: "actions", role: "group", "aria-label": "Time window" }, buttons),
    body,
  );
}
