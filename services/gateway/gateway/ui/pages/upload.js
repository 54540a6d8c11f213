// Upload: files or a folder, dropped or chosen; each file's progress, then its stage.
import { api, authHeaders, can, h } from "../lib.js";

const AT_ONCE = 3;
const FINISHED = new Set(["done", "failed", "partial"]);

function send(file, row) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("files[]", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/api/v1/ingest");
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) row.bar.value = event.loaded / event.total;
    };
    request.onload = () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
      if (request.status === 202) {
        row.bar.value = 1;
        row.set("uploaded, waiting for processing");
        resolve(body);
      } else {
        row.fail(`${request.status}: ${body.error || request.statusText || "refused"}`);
        resolve(null);
      }
    };
    request.onerror = () => { row.fail("the connection failed; try again"); resolve(null); };
    request.send(form);
  });
}

async function follow(job, row) {
  for (;;) {
    let status;
    try {
      status = await api(`/api/v1/ingest/${job.job_id}/status`);
    } catch (error) {
      row.fail(error.message);
      return;
    }
    const upload = (status.uploads || [])[0] || {};
    if (status.status === "failed" || upload.status === "failed") {
      row.fail(upload.error || "processing failed");
      return;
    }
    row.set(upload.stage || status.status, FINISHED.has(status.status));
    if (FINISHED.has(status.status)) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Every file of dropped entries, folders read recursively (a dropped folder has no files). */
async function filesOf(entries) {
  const found = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      found.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
      return;
    }
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) return;
      for (const child of batch) await walk(child);
    }
  };
  for (const entry of entries) await walk(entry);
  return found;
}

function fileRow(file) {
  const bar = h("progress", { max: 1, value: 0, "aria-label": `${file.name} upload progress` });
  const state = h("span", { class: "state" }, "waiting");
  const node = h("tr", { "data-file": file.name },
    h("td", {}, file.webkitRelativePath || file.name), h("td", {}, bar), h("td", {}, state));
  return {
    node, bar,
    set(text, done = false) { state.textContent = text; state.className = done ? "state ok" : "state"; },
    fail(text) { state.textContent = text; state.className = "state error"; },
  };
}

export async function renderUpload(main) {
  if (!can("write")) {
    main.replaceChildren(h("h2", {}, "Upload"),
      h("p", {}, "This key may read only; uploading needs a write key."));
    return;
  }
  const rows = h("tbody");
  const list = h("table", { "aria-label": "Uploads" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"),
      h("th", { scope: "col" }, "Sent"), h("th", { scope: "col" }, "Status"))), rows);

  async function upload(files) {
    const queue = [...files].map((file) => {
      const row = fileRow(file);
      rows.append(row.node);
      return [file, row];
    });
    const worker = async () => {
      while (queue.length) {
        const [file, row] = queue.shift();
        row.set("sending");
        const job = await send(file, row);
        if (job) follow(job, row);
      }
    };
    await Promise.all(Array.from({ length: AT_ONCE }, worker));
  }

  const files = h("input", { type: "file", id: "files", multiple: true,
    onchange: (e) => upload(e.target.files) });
  const folder = h("input", { type: "file", id: "folder", webkitdirectory: true,
    onchange: (e) => upload(e.target.files) });
  const drop = h("div", { class: "drop", tabindex: "0", role: "region",
    "aria-label": "Drop files here" }, "Drop images, videos or JSON files here");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const entries = [...e.dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
    upload(entries.every(Boolean) ? await filesOf(entries) : e.dataTransfer.files);
  });
  main.replaceChildren(
    h("h2", {}, "Upload"), drop,
    h("div", { class: "row" },
      h("label", { for: "files" }, "Choose files", files),
      h("label", { for: "folder" }, "Or a folder", folder)),
    h("div", { class: "scroll" }, list));
}
