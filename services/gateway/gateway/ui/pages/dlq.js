// Dead letters: what was parked and why; inspect, requeue, purge.
import { api, attempt, can, h, table, toast } from "../lib.js";

export async function renderDeadLetters(main) {
  if (!can("admin")) {
    main.replaceChildren(h("h2", {}, "Dead letters"), h("p", {}, "Dead letters need an admin key."));
    return;
  }
  const letters = await api("/api/v1/admin/dlq?state=parked&limit=200");
  const detail = h("pre", { "aria-label": "Dead letter", hidden: true });
  const redraw = () => renderDeadLetters(main);
  const act = (method, path, what) => attempt(async () => {
    const answer = await api(path, { method, json: method === "POST" ? {} : undefined });
    toast(`${what} ${answer.requeued ?? answer.purged}`, "ok");
    await redraw();
  });
  main.replaceChildren(h("h2", {}, "Dead letters"),
    h("div", { class: "row" },
      h("button", { type: "button", disabled: !letters.length,
        onclick: () => attempt(async () => {
          const answer = await api("/api/v1/admin/dlq/requeue", { method: "POST", json: { all: true } });
          toast(`Requeued ${answer.requeued}`, "ok");
          await redraw();
        }) }, "Requeue all"),
      h("button", { type: "button", class: "plain", disabled: !letters.length,
        onclick: () => act("DELETE", "/api/v1/admin/dlq", "Purged") }, "Purge all")),
    letters.length ? table(letters, [
      { label: "Queue", key: "queue" }, { label: "Error", key: "error" },
      { label: "Attempts", key: "attempts" }, { label: "Failed", key: "failed_at" },
      { label: "", render: (d) => h("span", {},
        h("button", { type: "button", class: "plain", onclick: () => attempt(async () => {
          detail.hidden = false;
          detail.textContent = JSON.stringify(await api(`/api/v1/admin/dlq/${d.job_id}`), null, 2);
        }) }, "Inspect"), " ",
        h("button", { type: "button", "data-requeue": d.job_id,
          onclick: () => act("POST", `/api/v1/admin/dlq/${d.job_id}/requeue`, "Requeued") }, "Requeue"), " ",
        h("button", { type: "button", class: "plain",
          onclick: () => act("DELETE", `/api/v1/admin/dlq/${d.job_id}`, "Purged") }, "Purge")) },
    ]) : h("p", { id: "no-letters" }, "No dead letters parked."),
    detail);
}
