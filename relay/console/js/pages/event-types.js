// Event types: the catalog from GET /v1/event-types, each type's fields read out of its JSON
// Schema into a table, with an example of its data and the schema itself for those who want it.
import { get } from "../api.js";
import { badge, clear, h, json, loading, notice, table } from "../dom.js";

// A local `$ref` (`#/$defs/PostError`), followed through the type's own schema.
function resolve(schema, root) {
  let found = schema;
  for (let hops = 0; found?.$ref?.startsWith("#/") && hops < 16; hops += 1) {
    found = found.$ref.slice(2).split("/").reduce((at, key) => at?.[key.replaceAll("~1", "/").replaceAll("~0", "~")], root);
  }
  return found ?? {};
}

const alternatives = (schema) => schema.anyOf ?? schema.oneOf ?? null;

// What a value of this schema is, in a few words; `sample` is one such value, if known.
function kind(schema, root, sample) {
  const s = resolve(schema, root);
  const choices = alternatives(s);
  if (choices) {
    const kinds = choices.filter((c) => resolve(c, root).type !== "null").map((c) => kind(c, root, sample));
    return [...new Set(kinds)].join(" or ") || "null";
  }
  if (s.const !== undefined) return `exactly ${JSON.stringify(s.const)}`;
  if (Array.isArray(s.enum)) return `one of ${s.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  const type = [].concat(s.type ?? []).filter((t) => t !== "null");
  if (type.includes("object") || s.properties) return "object";
  if (type.includes("array")) return s.items ? `list of ${kind(s.items, root)}` : "list";
  if (type.includes("integer")) return s.minimum === 0 ? "integer ≥ 0" : "integer";
  if (type.includes("number")) return "number";
  if (type.includes("boolean")) return "true or false";
  if (type.includes("string")) {
    if (s.format === "date-time") return "RFC 3339 time";
    // A pattern reads badly; the example shows what it takes.
    if (s.pattern) return typeof sample === "string" ? `string like ${sample}` : "string of a set form";
    return s.minLength ? "non-empty string" : "string";
  }
  return type.join(" or ") || "any value";
}

const nullable = (schema, root) =>
  (alternatives(resolve(schema, root)) ?? []).some((c) => resolve(c, root).type === "null") ||
  [].concat(resolve(schema, root).type ?? []).includes("null");

// One row per field, nested objects' fields under their parent's name (`error.message`).
function fields(schema, root, sample, prefix = "", rows = [], depth = 0) {
  const s = resolve(schema, root);
  const required = new Set(s.required ?? []);
  for (const [name, sub] of Object.entries(s.properties ?? {})) {
    const path = `${prefix}${name}`;
    const value = sample && typeof sample === "object" ? sample[name] : undefined;
    const described = resolve(sub, root);
    rows.push([
      h("code", {}, path),
      kind(sub, root, value),
      required.has(name) ? badge("required", "ok") : nullable(sub, root) ? "optional, may be null" : "optional",
      described.description ?? sub.description ?? "",
    ]);
    const objects = [described, ...(alternatives(described) ?? []).map((c) => resolve(c, root))];
    const nested = objects.find((o) => o.properties);
    if (nested && depth < 8) fields(nested, root, value, `${path}.`, rows, depth + 1);
  }
  return rows;
}

function typeSection(t) {
  const id = `type-${t.name}`;
  return h(
    "section",
    { class: "panel", "aria-labelledby": id },
    h("h2", { id }, h("code", {}, t.name), " ", t.builtin ? badge("built in", "scheduled") : badge("registered", "manual"), t.deprecated ? [" ", badge("deprecated", "failing")] : null),
    h("p", {}, t.description || "No description."),
    h("h3", {}, "Fields of its data"),
    table(["Field", "Type", "Required", "Description"], fields(t.schema, t.schema, t.example), "Any JSON object: this type names no fields."),
    h("p", { class: "muted" }, t.schema.additionalProperties === false ? "No other fields are allowed." : "Other fields are allowed and reach receivers as sent."),
    t.example ? [h("h3", {}, "Example of its data"), h("pre", { "aria-label": `Example of ${t.name}` }, JSON.stringify(t.example, null, 2))] : null,
    h("details", {}, h("summary", {}, "JSON Schema"), json(t.schema)),
  );
}

export async function page(main) {
  clear(main, h("h1", {}, "Event types"), loading("Loading event types…"));
  try {
    const types = (await get("/v1/event-types")).data;
    clear(
      main,
      h("h1", {}, "Event types"),
      h(
        "p",
        { class: "muted" },
        "Every event names one of these types, and its data is checked against the type's JSON Schema. " +
          "A webhook subscribes to types by name, by a prefix such as post.*, or to all of them with *.",
      ),
      h("nav", { class: "actions", "aria-label": "Event types" }, types.map((t) => h("a", { href: `#/event-types/${encodeURIComponent(t.name)}` }, t.name))),
      types.map(typeSection),
    );
  } catch (err) {
    clear(main, h("h1", {}, "Event types"), notice("error", err.message));
  }
}

// One type's page is the catalog scrolled to it: the fragment is taken by the console's routes.
export async function one(main, context) {
  await page(main, context);
  document.getElementById(`type-${context.params[0]}`)?.scrollIntoView();
}
