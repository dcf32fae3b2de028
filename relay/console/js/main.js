// The console: sign-in, navigation, and one page per `#/path`. Plain ES modules against the
// JSON API; the browser loads them as they are, so there is nothing to build.
import { call, session, whenSignedOut } from "./api.js";
import { clear, field, h, notice } from "./dom.js";
import * as audit from "./pages/audit.js";
import * as deliveries from "./pages/deliveries.js";
import * as eventTypes from "./pages/event-types.js";
import * as events from "./pages/events.js";
import * as overview from "./pages/overview.js";
import * as tokens from "./pages/tokens.js";
import * as webhooks from "./pages/webhooks.js";

const SECTIONS = [
  { path: "/overview", title: "Overview" },
  { path: "/webhooks", title: "Webhooks" },
  { path: "/deliveries", title: "Deliveries" },
  { path: "/events", title: "Events" },
  { path: "/event-types", title: "Event types" },
  { path: "/tokens", title: "Tokens", admin: true },
  { path: "/portal-links", title: "Portal links", admin: true },
  { path: "/audit", title: "Audit log", admin: true },
];

const ROUTES = [
  [/^\/overview$/, overview.page],
  [/^\/webhooks$/, webhooks.list],
  [/^\/webhooks\/([^/]+)$/, webhooks.detail],
  [/^\/deliveries$/, deliveries.list],
  // A delivery by its id; links of the form /deliveries/<webhook id>/<id> still open it.
  [/^\/deliveries\/(?:[^/]+\/)?([^/]+)$/, deliveries.detail],
  [/^\/events$/, events.lookup],
  [/^\/events\/([^/]+)$/, events.detail],
  [/^\/event-types$/, eventTypes.page],
  [/^\/event-types\/([^/]+)$/, eventTypes.one],
  [/^\/tokens$/, tokens.list],
  [/^\/portal-links$/, tokens.portal],
  [/^\/audit$/, audit.page],
];

const main = document.getElementById("main");
let current = new AbortController();

// Which role a token has, as the API describes the token to itself.
async function roleOf(token) {
  const { data } = await call("GET", "/v1/tokens/self", undefined, token);
  if (data.role !== "admin" && data.role !== "tenant") {
    throw new Error("This token may only post events. Sign in with an admin or tenant token.");
  }
  return data.role;
}

async function signIn(token, extra = {}) {
  const role = await roleOf(token);
  session.save({ token, role, ...extra });
}

// A portal link carries its token in the fragment (`#token=...`), which
// browsers never send to a server; it moves into sessionStorage and leaves the address bar.
async function signInFromFragment() {
  const raw = location.hash.replace(/^#/, "");
  if (!raw || raw.startsWith("/")) return;
  const params = new URLSearchParams(raw);
  const token = params.get("token") || params.get("session");
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  if (!token) return;
  session.clear();
  await signIn(token, { portal: true });
}

function signInPage(message, kind = "info") {
  const input = h("input", {
    type: "password", name: "token", autocomplete: "off", required: true, class: "wide",
    spellcheck: "false",
  });
  const out = h("div", { "aria-live": "polite" }, message ? notice(kind, message) : null);
  const button = h("button", { class: "primary", type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "panel signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to relay"),
    h("p", { class: "muted" }, "Paste an admin or tenant API token. It is kept in this tab only and sent as a bearer header."),
    h("div", { class: "row" }, field("API token", input), button),
    out,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    try {
      await signIn(input.value.trim());
      render(); // the page asked for before signing in, if any

    } catch (err) {
      clear(out, notice("error", err.message));
    } finally {
      button.disabled = false;
    }
  });
  clear(main, form);
  renderChrome(null);
  input.focus();
}

function renderChrome(who, path = "") {
  const nav = document.getElementById("nav");
  const whoEl = document.getElementById("who");
  if (!who) {
    nav.replaceChildren();
    whoEl.replaceChildren();
    return;
  }
  clear(
    nav,
    SECTIONS.filter((s) => !s.admin || who.role === "admin").map((s) =>
      h("a", { href: `#${s.path}`, "aria-current": path.startsWith(s.path) ? "page" : null }, s.title),
    ),
  );
  const label = who.role === "admin" ? "Admin" : who.portal ? "Portal session" : "Tenant";
  const out = h("button", { type: "button" }, "Sign out");
  out.addEventListener("click", () => {
    session.clear();
    location.hash = "#/";
    render();
  });
  clear(whoEl, h("span", {}, label), out);
}

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { path: path || "/", query: new URLSearchParams(query ?? "") };
}

export function render() {
  current.abort();
  current = new AbortController();
  const who = session.load();
  if (!who) return signInPage();
  const { path, query } = route();
  if (path === "/") {
    location.replace(who.role === "admin" ? "#/overview" : "#/webhooks");
    return;
  }
  renderChrome(who, path);
  for (const [pattern, page] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      const params = match.slice(1).map(decodeURIComponent);
      page(main, { params, query, who, signal: current.signal });
      main.focus();
      return;
    }
  }
  clear(main, h("h1", {}, "Not found"), h("p", {}, "There is no such page in the console."));
}

whenSignedOut((detail) => {
  session.clear();
  signInPage(`Signed out: ${detail || "the token is no longer valid"}. Sign in again.`);
});

// Every navigation, the first load or a later change of the fragment, may carry a portal link:
// one opened in a tab already showing the console (or set as an embedded frame's new src) fires
// only hashchange, and its token must still sign in and leave the address bar and history.
function navigate() {
  signInFromFragment()
    .then(render)
    .catch((err) => signInPage(`The link did not sign you in: ${err.message}`, "error"));
}

window.addEventListener("hashchange", navigate);
navigate();
