// Clusters: a grid (provisional first), one cluster's members, and the admin's changes.
import { api, attempt, can, h, session, table, thumb, toast } from "../lib.js";

const change = (id, body) => api(`/api/v1/clusters/${id}`, { method: "PATCH", json: body });

function card(cluster, selected, onSelect) {
  const name = cluster.name || "(unnamed)";
  return h("article", { class: `card${selected.has(cluster.id) ? " selected" : ""}`,
    "data-cluster": cluster.id },
  h("div", { class: "thumbs" }, (cluster.thumbnails || []).slice(0, 4).map((u) => thumb(u, ""))),
  h("h3", {}, h("a", { href: `#/clusters/${cluster.id}` }, name)),
  h("span", { class: "muted" }, `${cluster.member_count} members`),
  cluster.provisional ? h("span", { class: "provisional" }, "provisional") : h("span", { class: "ok" }, "confirmed"),
  can("admin") ? h("label", {}, h("input", { type: "checkbox", checked: selected.has(cluster.id),
    "aria-label": `select ${name} to merge`, onchange: (e) => onSelect(cluster.id, e.target.checked) }),
  "select") : null);
}

async function proposals() {
  if (!can("admin") || session.owner) return null;
  const found = await api("/api/v1/clusters/proposals?status=open&limit=20");
  if (!found.proposals.length) return h("p", { class: "muted" }, "No re-clustering proposals.");
  return table(found.proposals, [
    { label: "Kind", key: "kind" }, { label: "Reason", key: "reason" },
    { label: "Gain", render: (p) => p.gain.toFixed(3) },
    { label: "", render: (p) => h("span", {},
      h("button", { type: "button", onclick: () => attempt(async () => {
        await api(`/api/v1/clusters/proposals/${p.id}/accept`, { method: "POST" });
        location.reload(); }) }, "Accept"), " ",
      h("button", { type: "button", class: "plain", onclick: () => attempt(async () => {
        await api(`/api/v1/clusters/proposals/${p.id}/dismiss`, { method: "POST" });
        location.reload(); }) }, "Dismiss")) },
  ]);
}

async function renderList(main) {
  const found = await api("/api/v1/clusters?limit=100");
  const clusters = [...found.clusters].sort((a, b) => Number(b.provisional) - Number(a.provisional));
  const selected = new Set();
  const grid = h("div", { class: "grid", "aria-label": "Clusters" });
  const merge = h("button", { type: "button", disabled: true, onclick: () => attempt(async () => {
    const [target, ...sources] = [...selected];
    await change(target, { action: "merge", source_ids: sources });
    toast("Merged.", "ok");
    await renderList(main);
  }) }, "Merge selected");
  const draw = () => {
    grid.replaceChildren(...clusters.map((c) => card(c, selected, (id, on) => {
      if (on) selected.add(id); else selected.delete(id);
      merge.disabled = selected.size < 2;
      draw();
    })));
  };
  draw();
  main.replaceChildren(h("h2", {}, "Clusters"),
    h("p", { class: "muted" }, `${found.total} clusters`),
    can("admin") ? h("div", { class: "row" }, merge,
      h("span", { class: "muted" }, "Select two or more; the first selected keeps its name.")) : null,
    clusters.length ? grid : h("p", {}, "No clusters yet: upload some images."),
    can("admin") ? h("section", {}, h("h2", {}, "Re-clustering proposals"), await proposals()) : null);
}

function adminControls(cluster, redraw) {
  const name = h("input", { id: "cluster-name", value: cluster.name || "", maxlength: 200, required: true });
  const threshold = h("input", { id: "cluster-threshold", type: "number", step: "0.01", min: "0.01",
    max: "1", value: cluster.threshold ?? "" });
  const act = (body) => attempt(async () => { await change(cluster.id, body); await redraw(); });
  return h("div", {},
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); act({ action: "rename", name: name.value }); } },
      h("label", { for: "cluster-name" }, "Name", name), h("button", { type: "submit" }, "Rename")),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault();
      act({ action: "update_threshold", threshold: Number(threshold.value), reevaluate: false }); } },
    h("label", { for: "cluster-threshold" }, "Threshold", threshold),
    h("button", { type: "submit", class: "plain" }, "Set threshold")),
    h("div", { class: "row" },
      cluster.provisional ? h("button", { type: "button", onclick: () => act({ action: "confirm" }) }, "Confirm") : null,
      h("button", { type: "button", class: "plain", onclick: () => attempt(async () => {
        await change(cluster.id, { action: "reject" });
        location.hash = "#/clusters"; }) }, "Reject")));
}

async function renderOne(main, id) {
  const found = await api(`/api/v1/clusters/${encodeURIComponent(id)}?limit=200`);
  const cluster = found.cluster || found;
  const members = found.members || [];
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/clusters" }, "← All clusters")),
    h("h2", { id: "cluster-title" }, cluster.name || "(unnamed)"),
    h("p", { class: "muted" }, `${cluster.member_count} members · `,
      cluster.provisional ? "provisional" : "confirmed", ` · threshold ${cluster.threshold ?? "—"}`),
    can("admin") ? adminControls(cluster, () => renderOne(main, id)) : null,
    h("div", { class: "grid", "aria-label": "Members" }, members.map((m) => h("figure", { class: "card" },
      thumb(m.thumbnail_url, m.filename || ""), h("figcaption", {}, m.filename || m.system_id,
        h("br"), h("a", { href: `#/search/like/${m.system_id}` }, "More like this"))))));
}

export async function renderClusters(main, [id]) {
  if (id) await renderOne(main, id);
  else await renderList(main);
}
