// What every page shares: building elements, calling the API with the user's key, messages.

const KEY = "mammoth.key";
export const session = { role: null, owner: null, open: false };

/** An element: h("button", {onclick, class: "plain"}, "Save"); text is always text. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function key() {
  return localStorage.getItem(KEY);
}

export function setKey(value) {
  if (value) localStorage.setItem(KEY, value);
  else localStorage.removeItem(KEY);
}

export function authHeaders() {
  return key() ? { Authorization: `Bearer ${key()}` } : {};
}

/** Call the API: the parsed JSON (or text), or an ApiError in the gateway's words. */
export async function api(path, { method = "GET", json, body, text = false } = {}) {
  const headers = authHeaders();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (error) {
    throw new ApiError(0, "The gateway did not answer; is it running?");
  }
  const raw = await response.text();
  if (!response.ok) {
    let message = raw;
    try {
      const parsed = JSON.parse(raw);
      message = parsed.error + (parsed.details ? ` (${JSON.stringify(parsed.details)})` : "");
    } catch (_) { /* not JSON: the text itself */ }
    if (response.status === 401) document.dispatchEvent(new CustomEvent("needkey"));
    throw new ApiError(response.status, `${response.status}: ${message}`);
  }
  return text ? raw : (raw ? JSON.parse(raw) : null);
}

/** Whether the key may do what needs `role` (read < write < admin). */
export function can(role) {
  const rank = { read: 1, write: 2, admin: 3 };
  return (rank[session.role] || 0) >= rank[role];
}

/** A message in the corner: an error (the default) or, with kind "ok", a success. */
export function toast(message, kind = "error") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = kind === "ok" ? "toast good" : "toast";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

/** Run an action, showing its error in words instead of failing silently. */
export async function attempt(action) {
  try {
    return await action();
  } catch (error) {
    toast(error.message || String(error));
    return undefined;
  }
}

/** A thumbnail <img>: fetched with the key (an <img src> cannot send one), shown as a blob. */
export function thumb(url, alt) {
  const img = h("img", { alt: alt || "", class: "thumb", loading: "lazy" });
  if (!url) return img;
  fetch(url, { headers: authHeaders() })
    .then((r) => (r.ok ? r.blob() : null))
    .then((blob) => {
      if (!blob) return;
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      img.src = URL.createObjectURL(blob);
    })
    .catch(() => {});
  return img;
}

export function table(rows, columns) {
  return h("div", { class: "scroll" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label || c)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => {
        const value = c.render ? c.render(row) : row[c.key || c];
        return h("td", {}, value === null || value === undefined ? "" : value);
      }))))));
}
