// Events: look one up by relay id or upstream id, see its deliveries, retry its failures.
import { enc, get, post } from "../api.js";
import { act, badge, clear, facts, field, h, json, link, loading, notice, table, when } from "../dom.js";
import { deliveryHref } from "./common.js";

export async function lookup(main, { query }) {
  const input = h("input", { name: "id", required: true, class: "wide", value: query.get("id") ?? "", placeholder: "evt_… or the upstream id" });
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "panel", role: "search", "aria-label": "Find an event" },
    h("div", { class: "row" }, field("Event id or upstream id", input), h("button", { class: "primary", type: "submit" }, "Find")),
    out,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const wanted = input.value.trim();
    if (/^evt_[0-9a-z]{26}$/i.test(wanted)) {
      location.hash = `#/events/${enc(wanted)}`;
      return;
    }
    clear(out, loading("Looking…"));
    try {
      const { data } = await get("/v1/events", { id: wanted });
      if (data.length) location.hash = `#/events/${enc(data[0].id)}`;
      else clear(out, notice("info", `No event has the id ${wanted}.`));
    } catch (err) {
      clear(out, notice("error", err.message));
    }
  });
  const recent = h("div", {}, loading("Loading recent events…"));
  clear(main, h("h1", {}, "Events"), form, h("h2", {}, "Recent events"), recent);
  input.focus();
  try {
    const { data } = await get("/v1/events", { limit: 20 });
    clear(
      recent,
      table(
        ["Created", "Type", "Tenant", "Event"],
        data.map((ev) => [when(ev.created_at), ev.type, ev.tenant_id, link(`#/events/${enc(ev.id)}`, ev.id)]),
        "No events yet.",
      ),
    );
  } catch (err) {
    clear(recent, notice("error", err.message));
  }
}

export async function detail(main, { params: [id] }) {
  clear(main, h("h1", {}, "Event"), loading("Loading the event…"));
  let ev;
  try {
    ev = (await get(`/v1/events/${enc(id)}`)).data;
  } catch (err) {
    clear(main, h("h1", {}, "Event"), notice("error", err.status === 404 ? `Not found: ${err.message}` : err.message));
    return;
  }
  const out = h("div", { "aria-live": "polite" });
  const retry = h("button", { type: "button", class: "primary" }, "Retry failed deliveries");
  retry.addEventListener("click", () =>
    act(retry, out, async () => {
      const { data } = await post(`/v1/events/${enc(id)}/retry`);
      return notice("success", `Requeued ${data.requeued} failed deliveries.`);
    }),
  );
  clear(
    main,
    h("h1", {}, "Event ", h("span", { class: "mono" }, ev.id)),
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
      out,
    ),
    h("h2", {}, "Deliveries"),
    table(
      ["Delivery", "Webhook", "Status"],
      ev.deliveries.map((d) => [link(deliveryHref(d), d.id), link(`#/webhooks/${enc(d.webhook_id)}`, d.webhook_id), badge(d.status)]),
      "No webhook matched this event.",
    ),
    h("h2", {}, "Payload"),
    json(ev.data),
  );
}
