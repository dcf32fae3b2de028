// Building the page from API data. Every value goes in as a text node or an attribute, never
// as HTML: payloads and response bodies are written by strangers.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function notice(kind, ...text) {
  const role = kind === "error" ? "alert" : "status";
  return h("div", { class: `notice ${kind}`, role }, ...text);
}

export function loading(what = "Loading…") {
  return h("p", { class: "loading", role: "status", "aria-live": "polite" }, what);
}

export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}` }, text);
}

export function table(headers, rows, empty) {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  const head = h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)));
  const body = rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))));
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, body)));
}

export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "—")]));
}

export function field(label, control) {
  return h("label", {}, label, control);
}

export function link(href, text) {
  return h("a", { href }, text);
}

export function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

export function when(iso) {
  if (!iso) return "—";
  return h("time", { datetime: iso }, iso.replace("T", " ").replace(/\.\d+Z$/, "Z"));
}

export function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)} %`;
}

// Runs an action from a button: disables it meanwhile and shows the outcome (or the API's
// problem detail) in `out`.
export async function act(button, out, action) {
  button.disabled = true;
  clear(out, loading("Working…"));
  try {
    const result = await action();
    clear(out, result ?? "");
  } catch (err) {
    clear(out, notice("error", err.message));
  } finally {
    button.disabled = false;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function randomKey(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
