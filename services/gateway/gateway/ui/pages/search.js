// Search: by text, by an image, or "more like this"; filters; results with their scores.
import { api, h, thumb } from "../lib.js";

function results(found) {
  if (!found.results.length) return h("p", { id: "no-results" }, "Nothing found at or above the threshold.");
  return h("div", { class: "grid", "aria-label": "Results" }, found.results.map((r) => h("figure", {
    class: "card", "data-result": r.id },
  thumb(r.thumbnail_url, r.filename || ""),
  h("figcaption", {}, h("strong", {}, r.score.toFixed(3)), " ", r.filename || r.id,
    h("br"), h("span", { class: "muted" }, r.kind, r.cluster ? ` · ${r.cluster.name}` : ""),
    h("div", {}, (r.tags || []).map((t) => h("span", { class: "tag" }, t))),
    h("a", { href: `#/search/like/${r.id}` }, "More like this")))));
}

function byImage(file, filters) {
  const form = new FormData();
  for (const [name, value] of Object.entries(filters)) form.append(name, value);
  form.append("image", file, file.name);
  return api("/api/v1/search", { method: "POST", body: form });
}

export async function renderSearch(main, [mode, like]) {
  const query = h("input", { id: "query", type: "search", size: 40, maxlength: 1000 });
  const image = h("input", { id: "query-image", type: "file", accept: "image/*" });
  const kind = h("select", { id: "kind" }, h("option", { value: "" }, "any"),
    h("option", { value: "image" }, "image"), h("option", { value: "video" }, "video"));
  const owner = h("input", { id: "owner", size: 12 });
  const tags = h("input", { id: "tags", size: 16, placeholder: "comma-separated" });
  const cluster = h("select", { id: "cluster" }, h("option", { value: "" }, "any"));
  const after = h("input", { id: "after", type: "date" });
  const before = h("input", { id: "before", type: "date" });
  api("/api/v1/clusters?limit=100").then((found) => cluster.append(...found.clusters.map((c) =>
    h("option", { value: c.id }, c.name || c.id)))).catch(() => {});
  // A day in the browser's time zone, as the instant it starts (the API wants an instant).
  const day = (input, next) => {
    if (!input.value) return "";
    const start = new Date(`${input.value}T00:00:00`);
    if (next) start.setDate(start.getDate() + 1);
    return start.toISOString();
  };
  const out = h("div", { "aria-live": "polite" });
  const filters = () => Object.fromEntries(Object.entries({
    kind: kind.value, owner: owner.value.trim(), tags: tags.value.trim(), cluster_id: cluster.value,
    uploaded_after: day(after, false), uploaded_before: day(before, true),
  }).filter(([, v]) => v));
  const show = async (run) => {
    out.replaceChildren(h("p", { class: "muted" }, "Searching…"));
    try {
      const found = await run();
      out.replaceChildren(h("p", { class: "muted" }, `${found.results.length} results · ${found.query_time_ms} ms`), results(found));
    } catch (error) {
      out.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
    }
  };
  const search = () => {
    const f = filters();
    if (f.tags) f.tags = f.tags.split(",").map((t) => t.trim()).filter(Boolean);
    if (image.files.length) return show(() => byImage(image.files[0], filters()));
    if (!query.value.trim()) return undefined;
    return show(() => api("/api/v1/search", { method: "POST", json: { ...f, query: query.value.trim() } }));
  };
  main.replaceChildren(h("h2", {}, "Search"),
    h("form", { class: "row", role: "search", onsubmit: (e) => { e.preventDefault(); search(); } },
      h("label", { for: "query" }, "Words", query),
      h("label", { for: "query-image" }, "Or an image", image),
      h("label", { for: "kind" }, "Kind", kind),
      h("label", { for: "owner" }, "Owner", owner),
      h("label", { for: "tags" }, "Tags", tags),
      h("label", { for: "cluster" }, "Cluster", cluster),
      h("label", { for: "after" }, "Uploaded from", after),
      h("label", { for: "before" }, "to", before),
      h("button", { type: "submit" }, "Search")),
    out);
  if (mode === "like" && like) {
    await show(() => api("/api/v1/search", { method: "POST", json: { like } }));
  }
}
