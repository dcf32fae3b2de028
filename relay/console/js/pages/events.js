// Events: look one up by relay id or upstream id, see its deliveries, retry its failures.
import { enc, get, post } from "../api.js";
import { act, badge, clear, facts, field, h, json, link, loading, notice, table, when } from "../dom.js";
import { deliveryHref, eventTypeInput, filters, live, localInput, pager } from "./common.js";

const FILTERS = ["type", "tenant_id", "since", "until"];

// relay's own event ids (see relay/ids.py); anything else can only be an upstream id.
const EVENT_ID = /^evt_[0-9a-hjkmnp-tv-z]{26}$/;

const eventHref = (ev) => `#/events/${enc(ev.id)}`;

function eventTable(events, empty) {
  return table(
    ["Event", "Type", "Upstream id", "Tenant", "Created"],
    events.map((ev) => [link(eventHref(ev), ev.id), ev.type, ev.upstream_id ?? "—", ev.tenant_id, when(ev.created_at)]),
    empty,
  );
}

// The events an id names: the one with that relay id, else those its producers sent with that
// upstream id (unique per tenant, so an admin may find one in each of several tenants).
async function find(wanted) {
  if (EVENT_ID.test(wanted)) {
    try {
      return [(await get(`/v1/events/${enc(wanted)}`)).data];
    } catch (err) {
      if (err.status !== 404) throw err;
    }
  }
  return (await get("/v1/events", { id: wanted, limit: 100 })).data;
}

async function search(wanted, out, signal) {
  clear(out, loading(`Looking for ${wanted}…`));
  try {
    const found = await find(wanted);
    if (signal.aborted) return;
    if (found.length === 1) {
      location.replace(eventHref(found[0]));
    } else if (found.length) {
      clear(out, notice("info", `${found.length} events have the upstream id ${wanted}, one in each of these tenants.`), eventTable(found, ""));
    } else {
      clear(
        out,
        notice("info", `No event with id ${wanted}.`),
        h("p", { class: "muted" }, "Paste relay's event id (evt_…) or the id the producer sent with the event, exactly as sent."),
      );
    }
  } catch (err) {
    clear(out, notice("error", err.message));
  }
}

function lookupForm(wanted, signal) {
  const input = h("input", {
    name: "id", required: true, class: "wide", value: wanted, placeholder: "evt_… or the upstream id",
    spellcheck: "false", autocomplete: "off",
  });
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "panel", role: "search", "aria-label": "Find an event" },
    h("div", { class: "row" }, field("Event id or upstream id", input), h("button", { class: "primary", type: "submit" }, "Find")),
    out,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    // The search lives in the address, so it survives a reload and can be shared.
    const target = `#/events?${new URLSearchParams({ id: input.value.trim() })}`;
    if (location.hash === target) search(input.value.trim(), out, signal);
    else location.hash = target;
  });
  return { form, out };
}

function filterForm(query, who) {
  const value = (name) => query.get(name) ?? "";
  return filters("/events", "Filter events", FILTERS, query, [
    field("Event type", eventTypeInput(value("type"), "type")),
    who.role === "admin" ? field("Tenant", h("input", { name: "tenant_id", value: value("tenant_id"), placeholder: "any" })) : null,
    field("Since", localInput("since", value("since"))),
    field("Until", localInput("until", value("until"))),
  ]);
}

export async function lookup(main, { query, who, signal }) {
  const wanted = query.get("id")?.trim() ?? "";
  const { form, out } = lookupForm(wanted, signal);
  const recent = h("div", {}, loading("Loading recent events…"));
  clear(main, h("h1", {}, "Events"), form, h("h2", {}, "Recent events"), filterForm(query, who), recent);
  if (wanted) search(wanted, out, signal);
  const pages = new URLSearchParams(query);
  pages.delete("id");
  const filtered = FILTERS.some((name) => pages.get(name));
  try {
    const asked = Object.fromEntries([...FILTERS, "cursor"].map((name) => [name, pages.get(name)]));
    const page = await get("/v1/events", { ...asked, limit: 20 });
    const empty = filtered ? "No events match these filters." : "No events yet.";
    clear(recent, eventTable(page.data, empty), pager("/events", pages, page.next_cursor));
  } catch (err) {
    clear(recent, notice("error", err.message));
  }
}

function view(ev, out) {
  const retry = h("button", { type: "button", class: "primary" }, "Retry failed deliveries");
  retry.addEventListener("click", () =>
    act(retry, out, async () => {
      const { data } = await post(`/v1/events/${enc(ev.id)}/retry`);
      return notice("success", `Requeued ${data.requeued} failed deliveries.`);
    }),
  );
  return [
    h(
      "section",
      { class: "panel" },
      facts([
        ["Type", ev.type],
        ["Tenant", ev.tenant_id],
        ["Upstream id", ev.upstream_id],
        ["Created", when(ev.created_at)],
      ]),
      h("div", { class: "actions" }, retry),
    ),
    h("h2", {}, "Deliveries"),
    table(
      ["Delivery", "Webhook", "Status"],
      ev.deliveries.map((d) => [link(deliveryHref(d), d.id), link(`#/webhooks/${enc(d.webhook_id)}`, d.webhook_id), badge(d.status)]),
      "No webhook matched this event.",
    ),
    h("h2", {}, "Payload"),
    json(ev.data),
  ];
}

export async function detail(main, { params: [id], signal }) {
  const body = h("div", {}, loading("Loading the event…"));
  const out = h("div", { "aria-live": "polite" });
  clear(main, h("h1", {}, "Event ", h("span", { class: "mono" }, id)), out, body);
  const load = async () => (await get(`/v1/events/${enc(id)}`)).data;
  const missing = [`No event with id ${id}. `, link(`#/events?${new URLSearchParams({ id })}`, "Look it up as an upstream id")];
  await live(signal, body, load, (ev) => view(ev, out), missing);
}
