// The JSON API, with the session's bearer token. No cookies: nothing for another site to ride.
import { randomKey } from "./dom.js";

const KEY = "relay.session";

export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem?.detail || problem?.title || `relay answered ${status}`;
    const fields = Object.entries(problem?.errors ?? {})
      .map(([name, msgs]) => `${name}: ${[].concat(msgs).join(", ")}`)
      .join("; ");
    super(`${status ? `${status} ` : ""}${detail}${fields ? ` (${fields})` : ""}`);
    this.status = status;
    this.problem = problem;
  }
}

// The tab's sessionStorage, or the page's memory where a browser refuses storage to a framed
// page from another site (an embedded portal link): then a reload asks for a new link.
const memory = new Map();
function store() {
  try {
    return window.sessionStorage;
  } catch {
    return {
      getItem: (k) => memory.get(k) ?? null,
      setItem: (k, v) => memory.set(k, v),
      removeItem: (k) => memory.delete(k),
    };
  }
}

export const session = {
  load() {
    try {
      return JSON.parse(store().getItem(KEY)) ?? null;
    } catch {
      return null;
    }
  },
  save(value) {
    store().setItem(KEY, JSON.stringify(value));
  },
  clear() {
    store().removeItem(KEY);
  },
};

let onSignedOut = () => {};

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export async function call(method, path, body, token = session.load()?.token) {
  const headers = { accept: "application/json", authorization: `Bearer ${token}` };
  if (method !== "GET") headers["idempotency-key"] = randomKey("console-");
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { detail: `relay did not answer (${err.message}).` });
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { detail: text.slice(0, 300) };
  }
  if (!response.ok) {
    if (response.status === 401 && session.load()?.token === token) onSignedOut(parsed?.detail);
    throw new ApiError(response.status, parsed);
  }
  return parsed;
}

export const get = (path, query = {}) => {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== "" && v !== null && v !== undefined) params.set(k, v);
  const qs = params.toString();
  return call("GET", qs ? `${path}?${qs}` : path);
};
export const post = (path, body = {}) => call("POST", path, body);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);
export const enc = encodeURIComponent;
