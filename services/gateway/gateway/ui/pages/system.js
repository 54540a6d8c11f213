// System: /health in words, and one job's timeline.
import { api, h, table } from "../lib.js";

function section(name, value) {
  if (value === null || typeof value !== "object") return null;
  const rows = Object.entries(value).map(([k, v]) => ({ k, v: typeof v === "object" ? JSON.stringify(v) : String(v) }));
  return h("section", {}, h("h3", {}, name), table(rows, [{ label: "", key: "k" }, { label: "", key: "v" }]));
}

export async function renderSystem(main, [job]) {
  const response = await fetch("/health");
  const health = await response.json();
  const input = h("input", { id: "job-id", value: job || "", placeholder: "a job id", size: 40 });
  const timeline = h("pre", { "aria-label": "Timeline" });
  const show = async () => {
    timeline.textContent = "Loading…";
    try {
      timeline.textContent = await api(`/api/v1/ingest/${encodeURIComponent(input.value.trim())}/timeline?format=text`, { text: true });
    } catch (error) {
      timeline.textContent = error.message;
    }
  };
  main.replaceChildren(
    h("h2", {}, "System"),
    h("p", {}, "Status: ", h("strong", { id: "health-status",
      class: health.status === "healthy" ? "ok" : "error" }, health.status)),
    (health.reasons || []).length ? h("ul", {}, health.reasons.map((r) => h("li", {}, r))) : null,
    Object.entries(health).filter(([k]) => !["status", "reasons"].includes(k))
      .map(([k, v]) => section(k, v)),
    h("h2", {}, "A job's timeline"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); show(); } },
      h("label", { for: "job-id" }, "Job", input), h("button", { type: "submit" }, "Show")),
    timeline);
  if (job) show();
}
