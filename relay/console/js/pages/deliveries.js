// Deliveries: a filterable, paged list, and one delivery with its payload and every attempt.
import { enc, get, post } from "../api.js";
import { act, badge, clear, facts, field, h, json, link, loading, notice, table, when } from "../dom.js";
import { deliveryHref, deliveryTable, eventTypeInput, filters, live, localInput, pager, recoverForm, recoveryProgress } from "./common.js";

const STATUSES = ["", "pending", "delivering", "delivered", "failed", "canceled"];
const FILTERS = ["status", "event_type", "webhook_id", "tenant_id", "since", "until"];
const LIST_REFRESH_MS = 5000;
// The filters a recovery takes: all but the status, which for a recovery is always failed.
const SELECTION = FILTERS.filter((name) => name !== "status");

// Opens a delivery by the id alone, as a log line or an alert gives it.
function openForm() {
  const input = h("input", { name: "id", required: true, placeholder: "dlv_…", spellcheck: "false", autocomplete: "off" });
  const form = h(
    "form",
    { class: "panel row", role: "search", "aria-label": "Open a delivery by id" },
    field("Delivery id", input),
    h("button", { type: "submit" }, "Open delivery"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = deliveryHref({ id: input.value.trim() });
  });
  return form;
}

function filterForm(query, who) {
  const value = (name) => query.get(name) ?? "";
  const status = h("select", { name: "status" }, STATUSES.map((s) => h("option", { value: s, selected: s === value("status") }, s || "any")));
  return filters("/deliveries", "Filter deliveries", FILTERS, query, [
    field("Status", status),
    field("Event type", eventTypeInput(value("event_type"), "event_type")),
    field("Webhook", h("input", { name: "webhook_id", value: value("webhook_id"), placeholder: "wh_…" })),
    who.role === "admin" ? field("Tenant", h("input", { name: "tenant_id", value: value("tenant_id"), placeholder: "any" })) : null,
    field("Since", localInput("since", value("since"))),
    field("Until", localInput("until", value("until"))),
  ]);
}

// Every failed delivery the filters select goes again, on every page of the list, not only
// those shown: one recovery of the filter, followed until it is done.
function retryMatching(query) {
  const out = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "button", class: "primary" }, "Retry all matching");
  button.addEventListener("click", () =>
    act(button, out, async () => {
      const body = {};
      for (const name of SELECTION) if (query.get(name)) body[name] = query.get(name);
      return recoveryProgress((await post("/v1/recoveries", body)).data);
    }),
  );
  return h(
    "section",
    { class: "panel", "aria-label": "Retry all matching" },
    h("div", { class: "row" }, h("p", { class: "muted" }, "Send every failed delivery these filters select again, on every page."), button),
    out,
  );
}

export async function list(main, { query, who, signal }) {
  const results = h("div", {}, loading("Loading deliveries…"));
  const webhook = query.get("webhook_id");
  const failed = query.get("status") === "failed";
  clear(main, h("h1", {}, "Deliveries"), openForm(), filterForm(query, who), failed ? retryMatching(query) : null, results, webhook ? recoverForm(webhook) : null);
  const params = Object.fromEntries(FILTERS.map((f) => [f, query.get(f)]));
  const load = () => get("/v1/deliveries", { ...params, cursor: query.get("cursor"), limit: 50 });
  const shown = (page) => [deliveryTable(page.data, "No deliveries match these filters."), pager("/deliveries", query, page.next_cursor)];
  // New deliveries and changes of status appear while the list is open.
  await live(signal, results, load, shown, null, LIST_REFRESH_MS);
}

function attemptView(a) {
  const good = a.status_code >= 200 && a.status_code < 300;
  const code = a.status_code === null ? badge("no answer", "bad") : badge(String(a.status_code), good ? "ok" : "bad");
  return h(
    "details",
    { class: "attempt" },
    h("summary", {}, h("strong", {}, `Attempt ${a.number}`), badge(a.trigger), code, when(a.started_at), `${a.duration_ms} ms`, a.error ? h("span", {}, a.error) : null),
    h("h3", {}, "Request headers"),
    table(["Header", "Value"], Object.entries(a.request_headers ?? {}).map(([k, v]) => [h("code", {}, k), h("code", {}, v)]), "None recorded."),
    h("h3", {}, "Response body"),
    h("pre", {}, a.response_body || "(empty)"),
  );
}

function view(d, event, out) {
  const path = `/v1/webhooks/${enc(d.webhook_id)}/deliveries/${enc(d.id)}`;
  const retry = h("button", { type: "button", class: "primary" }, "Retry");
  const cancel = h("button", { type: "button" }, "Cancel");
  retry.addEventListener("click", () =>
    act(retry, out, async () => {
      const { data } = await post(`${path}/retry`);
      // A pending delivery gets a manual attempt outside its schedule, which keeps its next one
      // (unless that one was due already: then it just goes, and the answer says due now).
      const manual = d.status === "pending" && data.next_attempt_at === d.next_attempt_at;
      if (manual) return notice("success", "Manual attempt queued; the next scheduled attempt stays at ", when(data.next_attempt_at), ".");
      return notice("success", `Retry queued: the delivery is ${data.status}.`);
    }),
  );
  cancel.addEventListener("click", () =>
    act(cancel, out, async () => {
      const { data } = await post(`${path}/cancel`);
      return notice("success", `The delivery is ${data.status}.`);
    }),
  );
  return [
    h(
      "section",
      { class: "panel" },
      facts([
        ["Status", badge(d.status)],
        ["Event", link(`#/events/${enc(d.event_id)}`, `${d.event_type} · ${d.event_id}`)],
        ["Webhook", link(`#/webhooks/${enc(d.webhook_id)}`, d.webhook_id)],
        ["Tenant", d.tenant_id],
        ["Attempts", String(d.attempt_count)],
        ["Next attempt", when(d.next_attempt_at)],
        ["Last answer", d.last_status_code === null ? "—" : String(d.last_status_code)],
        ["Last error", d.last_error],
        ["Created", when(d.created_at)],
        ["Delivered", when(d.delivered_at)],
      ]),
      // Only what the API would take: a delivery in flight ends its attempt first, and only a
      // pending one can be canceled.
      h("div", { class: "actions" }, d.status === "delivering" ? null : retry, d.status === "pending" ? cancel : null),
    ),
    h("h2", {}, "Attempts"),
    d.attempts.length ? h("section", { class: "panel attempts" }, d.attempts.map(attemptView)) : h("p", { class: "empty" }, "No attempt yet."),
    h("h2", {}, "Event payload"),
    event ? json(event.data) : h("p", { class: "empty" }, "The event has expired."),
  ];
}

export async function detail(main, { params: [id], signal }) {
  const body = h("div", {}, loading("Loading the delivery…"));
  const out = h("div", { "aria-live": "polite" });
  clear(main, h("h1", {}, "Delivery ", h("span", { class: "mono" }, id)), out, body);
  let event;
  const load = async () => {
    const d = (await get(`/v1/deliveries/${enc(id)}`)).data;
    event ??= await get(`/v1/events/${enc(d.event_id)}`).then((r) => r.data, () => null);
    return { d, event };
  };
  const missing = [`No delivery with id ${id}. `, link("#/deliveries", "Find deliveries")];
  await live(signal, body, load, (value) => view(value.d, value.event, out), missing);
}
