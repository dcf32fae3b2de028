// API tokens and portal links (admins): issue a token and show it once, list and revoke them;
// open a portal link for a tenant.
import { del, enc, get, post } from "../api.js";
import { act, badge, clear, facts, field, h, loading, notice, table, when } from "../dom.js";
import { localInput, pager, utc } from "./common.js";

const ROLES = ["admin", "ingest", "tenant"];

// Two presses, not a dialog: the second press within a few seconds revokes.
function revokeButton(t, revoked) {
  const button = h("button", { type: "button", class: "danger" }, "Revoke");
  const out = h("span", { "aria-live": "polite" });
  let armed = false;
  button.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      button.textContent = "Press again to revoke";
      setTimeout(() => {
        armed = false;
        button.textContent = "Revoke";
      }, 5000);
      return;
    }
    act(button, out, async () => {
      await del(`/v1/tokens/${enc(t.id)}`);
      await revoked();
    });
  });
  return [button, out];
}

async function showTokens(results, query) {
  try {
    const page = await get("/v1/tokens", { cursor: query.get("cursor"), limit: 50 });
    const again = () => showTokens(results, query);
    clear(
      results,
      table(
        ["Name", "Token id", "Role", "Tenant", "Created", "Expires", "Last used", ""],
        page.data.map((t) => [
          t.name || "—",
          h("code", {}, t.id),
          badge(t.role, "scheduled"),
          t.tenant_id ?? "—",
          when(t.created_at),
          t.expires_at ? when(t.expires_at) : "never",
          t.last_used_at ? when(t.last_used_at) : "never",
          revokeButton(t, again),
        ]),
        "No tokens yet, besides the one relay was started with.",
      ),
      pager("/tokens", query, page.next_cursor),
    );
  } catch (err) {
    clear(results, notice("error", err.message));
  }
}

function createForm(created) {
  const role = h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r }, r)));
  const tenant = h("input", { name: "tenant_id", placeholder: "for tenant tokens" });
  const name = h("input", { name: "name", placeholder: "what it is for" });
  const expires = localInput("expires_at", "");
  const button = h("button", { class: "primary", type: "submit" }, "Create token");
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "panel", "aria-labelledby": "new-token" },
    h("h2", { id: "new-token" }, "New token"),
    h(
      "div",
      { class: "row" },
      field("Role", role),
      field("Tenant", tenant),
      field("Name", name),
      field("Expires (empty: never)", expires),
      button,
    ),
    out,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(button, out, async () => {
      const body = { role: role.value, name: name.value.trim() };
      if (role.value === "tenant") body.tenant_id = tenant.value.trim();
      if (expires.value) body.expires_at = utc(expires.value);
      const { data } = await post("/v1/tokens", body);
      form.reset();
      await created();
      return notice(
        "success",
        `Created ${data.id}. Copy the token now: relay keeps only its hash and will not show it again. `,
        h("code", { class: "secret" }, data.token),
      );
    });
  });
  return form;
}

export async function list(main, { query }) {
  const results = h("div", {}, loading("Loading tokens…"));
  const show = () => showTokens(results, query);
  clear(
    main,
    h("h1", {}, "API tokens"),
    h("p", { class: "muted" }, "Admin tokens may do everything, ingest tokens post and read events, tenant tokens see one tenant's webhooks, deliveries and events. Portal links are tenant tokens named \"portal session\"."),
    createForm(show),
    results,
  );
  await show();
}

export function portal(main) {
  const tenant = h("input", { name: "tenant_id", required: true, placeholder: "e.g. acme" });
  const ttl = h("input", { type: "number", name: "ttl_seconds", min: 60, max: 86400, value: 3600 });
  const button = h("button", { class: "primary", type: "submit" }, "Create portal link");
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "panel", "aria-labelledby": "new-link" },
    h("h2", { id: "new-link" }, "New portal link"),
    h("div", { class: "row" }, field("Tenant", tenant), field("Valid for (seconds, 60 to 86400)", ttl), button),
    out,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(button, out, async () => {
      const { data } = await post("/v1/portal-sessions", { tenant_id: tenant.value.trim(), ttl_seconds: Number(ttl.value) });
      const url = h("input", { readonly: true, class: "wide", value: data.url, spellcheck: "false" });
      return [
        notice("success", `A portal link for ${data.tenant_id}. Anyone who has it is signed in as this tenant until it expires.`),
        h("div", { class: "row" }, field("Portal link", url)),
        facts([
          ["Tenant", data.tenant_id],
          ["Expires", when(data.expires_at)],
          ["Token id (revoke it on the Tokens page)", h("code", {}, data.token_id)],
        ]),
        // A new tab: opened here, the link would sign this tab in as the tenant.
        h("p", {}, h("a", { href: data.url, target: "_blank", rel: "noopener noreferrer" }, "Open the portal in a new tab")),
      ];
    });
  });
  clear(
    main,
    h("h1", {}, "Portal links"),
    h("p", { class: "muted" }, "A portal link opens this console signed in as one tenant, which sees only its own webhooks, deliveries, events and figures. Your product can also ask for one (POST /v1/portal-sessions) and show it in a frame."),
    form,
  );
}
