// Pieces more than one page uses: pagers, time inputs, delivery rows, live views, the recover form.
import { enc, get, post } from "../api.js";
import { act, append, badge, clear, field, h, link, notice, sleep, table, when } from "../dom.js";

const POLL_MS = 2000;
const RECOVERY_POLL_MS = 1000;

export function pager(base, query, nextCursor) {
  const first = new URLSearchParams(query);
  first.delete("cursor");
  const next = new URLSearchParams(query);
  if (nextCursor) next.set("cursor", nextCursor);
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    query.get("cursor") ? link(`#${base}?${first}`, "First page") : null,
    nextCursor ? link(`#${base}?${next}`, "Next page") : null,
  );
}

// A datetime-local value (the viewer's time) as RFC 3339 UTC, or "" when empty.
export function utc(value) {
  return value ? new Date(value).toISOString() : "";
}

// An input showing an RFC 3339 time in the viewer's zone, at that moment's offset (which
// daylight saving time may make differ from today's).
export function localInput(name, iso) {
  const at = iso ? new Date(iso) : null;
  const value = at ? new Date(at.getTime() - at.getTimezoneOffset() * 60000).toISOString().slice(0, 16) : "";
  return h("input", { type: "datetime-local", name, value });
}

// The event types relay knows, offered as suggestions; any other name may still be typed.
export function eventTypeInput(value, name) {
  const choices = h("datalist", { id: `${name}-choices` });
  // Suggestions only: without them the field works as plain text, so a failure is not shown.
  get("/v1/event-types").then(
    ({ data }) => append(choices, data.map((t) => h("option", { value: t.name }))),
    () => {},
  );
  return [h("input", { name, value, placeholder: "any", list: `${name}-choices`, autocomplete: "off" }), choices];
}

// A list's filters, kept in the address (`#<base>?name=value…`) so a filtered list survives a
// reload and can be shared; `since` and `until` are typed in the viewer's zone, kept in UTC.
export function filters(base, label, names, query, controls) {
  const filtered = names.some((name) => query.get(name));
  const form = h(
    "form",
    { class: "panel row", role: "search", "aria-label": label },
    controls,
    h("button", { type: "submit", class: "primary" }, "Filter"),
    filtered ? link(`#${base}`, "Clear filters") : null,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const name of names) {
      const raw = String(data.get(name) ?? "").trim();
      const v = name === "since" || name === "until" ? utc(raw) : raw;
      if (v) next.set(name, v);
    }
    location.hash = `#${base}?${next}`;
  });
  return form;
}

// A delivery's page is named by its id alone, so an id from a log or an alert opens it.
export function deliveryHref(d) {
  return `#/deliveries/${enc(d.id)}`;
}

// How long a live view waits between reads: `every` ms, unless the page's root element sets
// `data-refresh-ms` (tests set it: short so they need not wait, long to hold a view still).
function interval(every) {
  return Number(document.documentElement.dataset.refreshMs) || every;
}

// Resolves at once while the tab is shown, else when it is shown again (or the page is left):
// a tab in the background asks relay for nothing.
function shown(signal) {
  if (document.visibilityState === "visible" || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (document.visibilityState !== "visible" && !signal.aborted) return;
      document.removeEventListener("visibilitychange", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    document.addEventListener("visibilitychange", done);
    signal.addEventListener("abort", done);
  });
}

// Waits between two reads of a live view: `every` ms, then for as long as the tab is hidden.
export async function pause(signal, every) {
  await sleep(interval(every));
  await shown(signal);
}

// Shows what `load` answers through `view`, again every `every` ms while the page is open and
// shown, so new rows, attempts and status changes appear by themselves; sections the reader
// opened stay open. A 404 shows `missing` (when given) instead.
export async function live(signal, body, load, view, missing, every = POLL_MS) {
  let drawn = "";
  for (let first = true; !signal.aborted; first = false) {
    if (!first) await pause(signal, every);
    if (signal.aborted) return;
    let value;
    try {
      value = await load();
    } catch (err) {
      if (!signal.aborted) clear(body, notice("error", err.status === 404 && missing ? missing : err.message));
      return;
    }
    if (signal.aborted) return;
    const fingerprint = JSON.stringify(value);
    if (fingerprint !== drawn) {
      const key = (el) => el.querySelector("summary strong")?.textContent;
      const open = [...body.querySelectorAll("details[open]")].map(key);
      clear(body, view(value));
      for (const el of body.querySelectorAll("details")) if (open.includes(key(el))) el.open = true;
      drawn = fingerprint;
    }
  }
}

const DELIVERY_COLUMNS = [
  ["Created", (d) => link(deliveryHref(d), when(d.created_at))],
  ["Status", (d) => badge(d.status)],
  ["Event type", (d) => d.event_type],
  ["Webhook", (d) => link(`#/webhooks/${enc(d.webhook_id)}`, d.webhook_id)],
  ["Tenant", (d) => d.tenant_id],
  ["Attempts", (d) => String(d.attempt_count)],
  ["Last answer", (d) => String(d.last_status_code ?? d.last_error ?? "—")],
];

// A table of deliveries; `omit` names columns the page already makes plain (e.g. "Webhook").
export function deliveryTable(list, empty, omit = []) {
  const columns = DELIVERY_COLUMNS.filter(([title]) => !omit.includes(title));
  return table(
    columns.map(([title]) => title),
    list.map((d) => columns.map(([, cell]) => cell(d))),
    empty,
  );
}

export function recoverForm(webhookId) {
  const since = localInput("since", new Date(Date.now() - 86_400_000).toISOString());
  const until = localInput("until", "");
  const out = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Recover failed deliveries");
  const form = h(
    "form",
    { class: "panel", "aria-label": "Recover failed deliveries" },
    h("h2", {}, "Recover failed deliveries"),
    h("p", { class: "muted" }, "Every failed delivery of this webhook created in the window goes again."),
    h("div", { class: "row" }, field("Since", since), field("Until (empty: now)", until), button),
    out,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(button, out, async () => {
      const body = { since: utc(since.value) };
      if (until.value) body.until = utc(until.value);
      const { data } = await post(`/v1/webhooks/${enc(webhookId)}/recover`, body);
      return recoveryProgress(data);
    });
  });
  return form;
}

// A form's progress has no page signal to follow: it stops once its output leaves the page.
const STAYS_OPEN = new AbortController().signal;

// A recovery as it goes: the first batch is sent again at once, the rest in the background, so
// its progress is read again (while the tab is shown) until it is done or the page is left.
export function recoveryProgress(recovery) {
  const out = h("div", {});
  const show = (r) =>
    clear(
      out,
      r.status === "done"
        ? notice("success", `Requeued ${r.requeued} failed deliveries.`)
        : notice("info", `Requeuing failed deliveries: ${r.requeued} so far…`),
    );
  const follow = async (r) => {
    while (r.status !== "done") {
      await pause(STAYS_OPEN, RECOVERY_POLL_MS);
      if (!out.isConnected) return;
      try {
        r = (await get(r.url)).data;
      } catch (err) {
        clear(out, notice("error", err.message));
        return;
      }
      show(r);
    }
  };
  show(recovery);
  follow(recovery);
  return out;
}
