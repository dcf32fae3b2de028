// Webhooks: list (per tenant for admins), create, edit, enable/disable, delete, secrets, tests,
// and each one's success rate and latency.
import { del, enc, get, patch, post } from "../api.js";
import { act, badge, clear, facts, field, h, link, loading, notice, table, when } from "../dom.js";
import { deliveryTable, pager, recoverForm } from "./common.js";
import { webhookFigures } from "./webhook-figures.js";

const SCHEMES = ["hmac-sha256", "ed25519"];

// An Ed25519 webhook's owner gets the public key that verifies it, not a shared secret.
function keyLabel(value) {
  return value.startsWith("whpk_") ? "Public key" : "Secret";
}

function headerText(headers) {
  return Object.entries(headers ?? {}).map(([k, v]) => `${k}: ${v}`).join("\n");
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at < 1) throw new Error(`Headers: write each as "Name: value" ("${line.trim()}" is not).`);
    headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return headers;
}

// The fields of a webhook, for creating one or changing one; `read()` gives the API body.
function webhookFields(w, { tenant }) {
  const inputs = {
    url: h("input", { type: "url", name: "url", required: true, class: "wide", value: w.url ?? "", placeholder: "https://example.com/hooks" }),
    tenant_id: tenant ? h("input", { name: "tenant_id", required: true, value: w.tenant_id ?? "" }) : null,
    events: h("input", { name: "events", value: (w.events ?? ["*"]).join(", ") }),
    description: h("input", { name: "description", value: w.description ?? "" }),
    rate: h("input", { type: "number", name: "rate_limit_per_second", min: 1, value: w.rate_limit_per_second ?? "" }),
    headers: h("textarea", { name: "headers", rows: 2, placeholder: "X-Custom: value" }),
    scheme: !w.id
      ? h("select", { name: "signature_scheme" }, SCHEMES.map((v) => h("option", { value: v }, v)))
      : null,
  };
  inputs.headers.value = headerText(w.headers);
  const controls = [
    h("div", { class: "row" }, field("URL", inputs.url), tenant ? field("Tenant", inputs.tenant_id) : null),
    h(
      "div",
      { class: "row" },
      field("Event types (comma-separated; * for all)", inputs.events),
      field("Description", inputs.description),
      field("Rate limit per second (empty: none)", inputs.rate),
      inputs.scheme ? field("Signature scheme", inputs.scheme) : null,
    ),
    field("Custom headers, one per line", inputs.headers),
    w.id
      ? h("p", { class: "muted" }, "Stored values are hidden; a value left as [redacted] is kept.")
      : null,
  ];
  const read = () => {
    const body = {
      url: inputs.url.value.trim(),
      events: inputs.events.value.split(",").map((s) => s.trim()).filter(Boolean),
      description: inputs.description.value,
      headers: parseHeaders(inputs.headers.value),
      rate_limit_per_second: inputs.rate.value ? Number(inputs.rate.value) : null,
    };
    if (tenant) body.tenant_id = inputs.tenant_id.value.trim();
    if (inputs.scheme) body.signature_scheme = inputs.scheme.value;
    return body;
  };
  return { controls, read };
}

function createForm(who, created) {
  const { controls, read } = webhookFields({}, { tenant: who.role === "admin" });
  const out = h("div", { "aria-live": "polite" });
  const button = h("button", { class: "primary", type: "submit" }, "Create webhook");
  const form = h("form", { class: "panel", "aria-labelledby": "new-webhook" }, h("h2", { id: "new-webhook" }, "New webhook"), controls, h("div", { class: "actions" }, button), out);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(button, out, async () => {
      const { data } = await post("/v1/webhooks", read());
      // Ready for the next one; the list above shows this one now.
      form.reset();
      await created();
      return notice(
        "success",
        "Created ",
        link(`#/webhooks/${enc(data.id)}`, data.id),
        `. Its ${keyLabel(data.secret).toLowerCase()} (you can reveal it again on its page): `,
        h("code", {}, data.secret),
      );
    });
  });
  return form;
}

export async function list(main, { query, who }) {
  const tenant = query.get("tenant_id") ?? "";
  const results = h("div", {}, loading("Loading webhooks…"));
  const filter =
    who.role === "admin"
      ? h(
          "form",
          { class: "panel row", role: "search", "aria-label": "Filter webhooks" },
          field("Tenant", h("input", { name: "tenant_id", value: tenant, placeholder: "all tenants" })),
          h("button", { type: "submit" }, "Show"),
        )
      : null;
  filter?.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams(new FormData(filter));
    location.hash = `#/webhooks?${params}`;
  });
  const show = () => showList(results, query, tenant);
  clear(main, h("h1", {}, "Webhooks"), filter, results, createForm(who, show));
  await show();
}

async function showList(results, query, tenant) {
  try {
    const page = await get("/v1/webhooks", { tenant_id: tenant, cursor: query.get("cursor"), limit: 50 });
    clear(
      results,
      table(
        ["URL", "Tenant", "Events", "State", "Created"],
        page.data.map((w) => [
          link(`#/webhooks/${enc(w.id)}`, w.url),
          w.tenant_id,
          w.events.join(", "),
          w.enabled ? badge("enabled") : badge("disabled"),
          when(w.created_at),
        ]),
        tenant ? `No webhooks for tenant ${tenant} yet.` : "No webhooks yet. Create one below.",
      ),
      pager("/webhooks", query, page.next_cursor),
    );
  } catch (err) {
    clear(results, notice("error", err.message));
  }
}

function secretPanel(id) {
  const out = h("div", { "aria-live": "polite" });
  const grace = h("input", { type: "number", name: "grace_seconds", min: 0, value: 86400 });
  const reveal = h("button", { type: "button" }, "Reveal secret");
  const rotate = h("button", { type: "button" }, "Rotate secret");
  reveal.addEventListener("click", () =>
    act(reveal, out, async () => {
      const { data } = await get(`/v1/webhooks/${enc(id)}/secret`);
      const previous = (data.previous ?? []).map((p) => h("li", {}, "a previous secret signs until ", when(p.expires_at)));
      return [
        h("p", {}, `${keyLabel(data.secret)}: `, h("code", { class: "secret" }, data.secret)),
        previous.length ? h("ul", {}, previous) : null,
      ];
    }),
  );
  rotate.addEventListener("click", () =>
    act(rotate, out, async () => {
      const { data } = await post(`/v1/webhooks/${enc(id)}/rotate-secret`, { grace_seconds: Number(grace.value || 0) });
      return notice("success", `New ${keyLabel(data.secret).toLowerCase()}: `, h("code", { class: "secret" }, data.secret), ". The previous one also signs until ", when(data.previous_expires_at), ".");
    }),
  );
  return h(
    "section",
    { class: "panel", "aria-labelledby": "secret-title" },
    h("h2", { id: "secret-title" }, "Signing secret"),
    h("div", { class: "row" }, reveal, field("Grace for the previous secret (seconds)", grace), rotate),
    out,
  );
}

async function testPanel(id) {
  const types = (await get("/v1/event-types")).data.map((t) => t.name);
  const select = h("select", { name: "type" }, types.map((t) => h("option", { value: t }, t)));
  const button = h("button", { type: "submit" }, "Send test event");
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "panel", "aria-labelledby": "test-title" }, h("h2", { id: "test-title" }, "Send a test event"), h("div", { class: "row" }, field("Event type", select), button), out);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(button, out, async () => {
      const { data } = await post("/v1/webhooks/test", { webhook_id: id, type: select.value });
      const good = data.status_code >= 200 && data.status_code < 300;
      return [
        facts([
          ["Answer", data.status_code === null ? badge("no answer", "bad") : badge(String(data.status_code), good ? "ok" : "bad")],
          ["Duration", `${data.duration_ms} ms`],
          ["Error", data.error],
        ]),
        h("pre", { "aria-label": "Response body" }, data.response_body || "(empty body)"),
      ];
    });
  });
  return form;
}

function editForm(w, onSaved) {
  const { controls, read } = webhookFields(w, { tenant: false });
  const out = h("div", { "aria-live": "polite" });
  const button = h("button", { class: "primary", type: "submit" }, "Save changes");
  const form = h("form", { class: "panel", "aria-labelledby": "edit-title" }, h("h2", { id: "edit-title" }, "Edit"), controls, h("div", { class: "actions" }, button), out);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(button, out, async () => {
      const { data } = await patch(`/v1/webhooks/${enc(w.id)}`, read());
      onSaved(data);
      return notice("success", "Saved.");
    });
  });
  return form;
}

// Adapted by relay to how the endpoint answers: read-only, as of when the page was loaded.
function concurrencyText(concurrency) {
  if (!concurrency) return "—";
  return `${concurrency.current} attempts in flight at most now (adapts up to ${concurrency.max})`;
}

function summary(w) {
  return facts([
    ["ID", h("code", {}, w.id)],
    ["URL", w.url],
    ["Tenant", w.tenant_id],
    ["State", [w.enabled ? badge("enabled") : badge("disabled"), w.disabled_reason ? ` ${w.disabled_reason}` : ""]],
    ["Event types", w.events.join(", ")],
    ["Description", w.description || "—"],
    ["Custom headers", headerText(w.headers) || "—"],
    ["Rate limit", w.rate_limit_per_second ? `${w.rate_limit_per_second} per second` : "none"],
    ["Concurrency", concurrencyText(w.concurrency)],
    ["Signatures", w.signature_scheme],
    ["Created", when(w.created_at)],
    ["Updated", when(w.updated_at)],
  ]);
}

export async function detail(main, { params: [id] }) {
  clear(main, h("h1", {}, "Webhook"), loading("Loading the webhook…"));
  let w;
  try {
    w = (await get(`/v1/webhooks/${enc(id)}`)).data;
  } catch (err) {
    clear(main, h("h1", {}, "Webhook"), notice("error", err.status === 404 ? `Not found: ${err.message}` : err.message));
    return;
  }
  const facts_ = h("div", {}, summary(w));
  const out = h("div", { "aria-live": "polite" });
  const toggle = h("button", { type: "button" }, w.enabled ? "Disable" : "Enable");
  const remove = h("button", { type: "button", class: "danger" }, "Delete webhook");
  const recent = h("div", {}, loading("Loading recent deliveries…"));
  const saved = (next) => {
    // A change's answer does not say how relay delivers to it now: the last reading stays.
    w = { ...next, concurrency: w.concurrency };
    clear(facts_, summary(w));
    toggle.textContent = w.enabled ? "Disable" : "Enable";
  };
  toggle.addEventListener("click", () =>
    act(toggle, out, async () => {
      saved((await patch(`/v1/webhooks/${enc(id)}`, { enabled: !w.enabled })).data);
      return notice("success", w.enabled ? "Enabled." : "Disabled.");
    }),
  );
  // Two presses, not a dialog: the second press within a few seconds deletes.
  let armed = false;
  remove.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      remove.textContent = "Press again to delete";
      setTimeout(() => {
        armed = false;
        remove.textContent = "Delete webhook";
      }, 5000);
      return;
    }
    act(remove, out, async () => {
      await del(`/v1/webhooks/${enc(id)}`);
      location.hash = "#/webhooks";
      return notice("success", "Deleted.");
    });
  });
  clear(
    main,
    h("h1", {}, "Webhook ", h("span", { class: "mono" }, w.url)),
    h("section", { class: "panel" }, facts_, h("div", { class: "actions" }, toggle, remove), out),
    webhookFigures(id),
    h("h2", {}, "Recent deliveries"),
    recent,
    secretPanel(id),
    await testPanel(id).catch((err) => notice("error", err.message)),
    editForm(w, saved),
    recoverForm(id),
  );
  try {
    const deliveries = (await get(`/v1/webhooks/${enc(id)}/deliveries`, { limit: 10 })).data;
    clear(
      recent,
      deliveryTable(deliveries, "No deliveries yet.", ["Webhook", "Tenant"]),
      link(`#/deliveries?webhook_id=${enc(id)}`, "All deliveries of this webhook"),
    );
  } catch (err) {
    clear(recent, notice("error", err.message));
  }
}
