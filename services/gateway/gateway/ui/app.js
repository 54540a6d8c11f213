// The page: who the key is, the banner, the navigation, and the page the address names.
import { api, can, h, session, setKey, key } from "./lib.js";
import { renderUpload } from "./pages/upload.js";
import { renderClusters } from "./pages/clusters.js";
import { renderSearch } from "./pages/search.js";
import { renderCollections } from "./pages/collections.js";
import { renderDeadLetters } from "./pages/dlq.js";
import { renderSystem } from "./pages/system.js";

const pages = {
  upload: renderUpload,
  clusters: renderClusters,
  search: renderSearch,
  collections: renderCollections,
  dlq: renderDeadLetters,
  system: renderSystem,
};

function keyForm(message) {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", required: true });
  return h("form", {
    class: "row",
    onsubmit: async (event) => {
      event.preventDefault();
      setKey(input.value.trim());
      await start();
    },
  },
  h("p", {}, message),
  h("label", { for: "api-key" }, "API key", input),
  h("button", { type: "submit" }, "Use this key"));
}

async function whoami() {
  Object.assign(session, await api("/api/v1/me"));
  return session.role !== null;
}

function showWho() {
  const who = document.getElementById("who");
  who.replaceChildren(
    session.open ? "open mode" : `${session.role} key${session.owner ? ` of ${session.owner}` : ""}`,
    " ",
    !session.open && key() ? h("button", { class: "plain", type: "button",
      onclick: () => { setKey(null); start(); } }, "Forget key") : "");
  const banner = document.getElementById("banner");
  banner.hidden = !session.open;
  banner.textContent = session.open
    ? "Open mode: no API keys are configured, so anyone who reaches this address may do anything."
    : "";
  document.body.dataset.role = session.role || "";
  for (const link of document.querySelectorAll("nav [data-role]")) {
    link.hidden = !can(link.dataset.role);
  }
}

async function route() {
  const main = document.getElementById("main");
  const [name, ...rest] = (location.hash.replace(/^#\//, "") || "upload").split("/");
  const render = pages[name] || renderUpload;
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `#/${name}`);
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
  }
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await render(main, rest);
  } catch (error) {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, error.message || String(error)));
  }
}

async function start() {
  const main = document.getElementById("main");
  let known;
  try {
    known = await whoami();
  } catch (error) {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
    return;
  }
  if (!known) {
    session.role = null;
    showWho();
    main.replaceChildren(keyForm(key() ? "That key was refused; give another." :
      "This gateway needs an API key."));
    return;
  }
  showWho();
  await route();
}

// A key refused later (removed from API_KEYS meanwhile): ask again, once.
document.addEventListener("needkey", () => {
  if (!session.role) return;
  session.role = null;
  start();
});
window.addEventListener("hashchange", () => { if (session.role) route(); });
start();
