// Collections: each schema with its decision and reasons, approve or reject, its documents.
import { api, attempt, can, h, table } from "../lib.js";

function documents(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No documents.");
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.document || {})))].slice(0, 12);
  return table(rows, [{ label: "id", key: "system_id" },
    ...keys.map((k) => ({ label: k, render: (r) => {
      const v = (r.document || {})[k];
      return typeof v === "object" && v !== null ? JSON.stringify(v) : v;
    } }))]);
}

function schemaCard(schema, redraw) {
  const decision = schema.decision || {};
  const docs = h("div");
  const open = ["provisional"].includes(schema.status);
  return h("article", { class: "card", "data-schema": schema.id },
    h("h3", {}, `${schema.owner} / ${schema.name}`),
    h("p", {}, `${schema.status} · ${schema.storage} · ${schema.document_count} documents`),
    decision.reasons ? h("ul", {}, decision.reasons.map((r) => h("li", {}, r))) : null,
    h("div", { class: "row" },
      can("admin") && open ? h("button", { type: "button", onclick: () => attempt(async () => {
        await api(`/api/v1/schemas/${schema.id}/approve`, { method: "POST" }); await redraw(); }) },
      "Approve table") : null,
      can("admin") && open ? h("button", { type: "button", class: "plain", onclick: () => attempt(async () => {
        await api(`/api/v1/schemas/${schema.id}/reject`, { method: "POST" }); await redraw(); }) },
      "Keep as JSONB") : null,
      h("button", { type: "button", class: "plain", onclick: () => attempt(async () => {
        const found = await api(`/api/v1/collections/${encodeURIComponent(schema.name)}/documents?limit=50&owner=${encodeURIComponent(schema.owner)}`);
        docs.replaceChildren(documents(found.documents));
      }) }, "Documents")),
    docs);
}

export async function renderCollections(main) {
  const draw = async () => {
    const found = await api("/api/v1/schemas?limit=100");
    const schemas = Array.isArray(found) ? found : found.schemas || [];
    main.replaceChildren(h("h2", {}, "Collections"),
      schemas.length ? h("div", {}, schemas.map((s) => schemaCard(s, draw)))
        : h("p", {}, "No JSON collections yet."));
  };
  await draw();
}
