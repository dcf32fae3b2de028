// The audit log (admins): who changed what, newest first, filtered by tenant, action and time.
import { get } from "../api.js";
import { badge, clear, field, h, link, loading, notice, table, when } from "../dom.js";
import { localInput, pager, utc } from "./common.js";

const FILTERS = ["tenant_id", "action", "since", "until"];

function filterForm(query) {
  const inputs = {
    tenant_id: h("input", { name: "tenant_id", value: query.get("tenant_id") ?? "", placeholder: "all tenants" }),
    action: h("input", { name: "action", value: query.get("action") ?? "", placeholder: "e.g. webhook.secret.rotate", spellcheck: "false" }),
    since: localInput("since", query.get("since")),
    until: localInput("until", query.get("until")),
  };
  const form = h(
    "form",
    { class: "panel row", role: "search", "aria-label": "Filter the audit log" },
    field("Tenant", inputs.tenant_id),
    field("Action", inputs.action),
    field("Since", inputs.since),
    field("Until", inputs.until),
    h("button", { type: "submit" }, "Filter"),
    FILTERS.some((name) => query.get(name)) ? link("#/audit", "Clear filters") : null,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = name === "since" || name === "until" ? utc(inputs[name].value) : inputs[name].value.trim();
      if (value) params.set(name, value);
    }
    location.hash = `#/audit?${params}`;
  });
  return form;
}

const actor = (a) => [h("code", {}, a.token_id), " ", badge(a.role, "scheduled")];

// Objects the console has a page for open there.
const PAGES = { wh_: "#/webhooks/", dlv_: "#/deliveries/", evt_: "#/events/" };

function object(id) {
  if (!id) return "—";
  const base = Object.entries(PAGES).find(([prefix]) => id.startsWith(prefix))?.[1];
  return base ? link(`${base}${encodeURIComponent(id)}`, id) : h("code", {}, id);
}

export async function page(main, { query, signal }) {
  const results = h("div", {}, loading("Loading the audit log…"));
  clear(main, h("h1", {}, "Audit log"), filterForm(query), results);
  const filters = Object.fromEntries(FILTERS.map((name) => [name, query.get(name)]));
  try {
    const found = await get("/v1/audit-log", { ...filters, cursor: query.get("cursor"), limit: 50 });
    if (signal.aborted) return;
    clear(
      results,
      table(
        ["When", "Action", "Who", "Object", "Tenant", "Request id"],
        found.data.map((e) => [
          when(e.at),
          h("code", {}, e.action),
          actor(e.actor),
          object(e.object_id),
          e.tenant_id ?? "—",
          e.request_id ? h("code", {}, e.request_id) : "—",
        ]),
        FILTERS.some((name) => query.get(name)) ? "No entries match these filters." : "Nothing has been changed yet.",
      ),
      pager("/audit", query, found.next_cursor),
    );
  } catch (err) {
    clear(results, notice("error", err.message));
  }
}
