// /admin: alert settings CRUD (ETag / If-Match), live through topic `settings`, the
// delivery log of a notice and the silences (admin-silences.js). The service token is
// asked once and kept for this tab only.
import { loadSilences } from "/static/admin-silences.js";
import { ago, api, ApiError, follow, h, SERVICE_TOKEN, toast } from "/static/lib.js";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(SERVICE_TOKEN) || "";
const settings = new Map(); // id -> setting (its `version` is the ETag)
const rows = new Map(); // id -> <tr>
let next = null;
let nameFilter = "";
let editing = null; // the setting being edited, or null for a new one
let stream = null;

// ------------------------------------------------------------------ sign in / out
function showApp(on) {
  $("signin").hidden = on;
  $("app").hidden = !on;
  $("signout").hidden = !on;
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const candidate = $("svc").value.trim();
  $("svc-err").textContent = "";
  try {
    await api("/api/v1/settings?limit=1", { token: candidate });
  } catch (err) {
    $("svc-err").textContent = err.status === 401 ? "This is not a service token." : err.message;
    return;
  }
  token = candidate;
  sessionStorage.setItem(SERVICE_TOKEN, token);
  start();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(SERVICE_TOKEN);
  token = "";
  if (stream) stream.close();
  showApp(false);
  $("svc").value = "";
  $("svc").focus();
});

// ------------------------------------------------------------------ the list
const etagOf = (s) => `"${s.version}"`;
const compact = (obj) => {
  const text = JSON.stringify(obj ?? {});
  return text.length > 60 ? text.slice(0, 57) + "…" : text;
};

function channelSummary(channel) {
  const parts = [];
  for (const [name, value] of Object.entries(channel || {})) {
    if (name === "forward_after") continue;
    const users = value && Array.isArray(value.users) ? ` (${value.users.length})` : "";
    parts.push(h("span", { class: "tag info", text: name + users }));
  }
  if (typeof channel?.forward_after === "number") {
    parts.push(h("span", { class: "muted", text: ` after ${channel.forward_after}s` }));
  }
  return parts.length ? parts : [h("span", { class: "muted", text: "—" })];
}

function row(s) {
  const toggle = h("input", { type: "checkbox", "aria-label": `Enable ${s.name}`,
    checked: s.enabled, "data-action": "toggle" });
  toggle.addEventListener("change", () => setEnabled(s.id, toggle));
  return [
    h("td", {}, h("strong", { text: s.name }), h("br"),
      h("span", { class: "muted mono", text: s.id })),
    h("td", {}, h("code", { title: JSON.stringify(s.metric), text: compact(s.metric) })),
    h("td", {}, h("span", { class: "row" }, channelSummary(s.channel))),
    h("td", {}, h("label", { class: "row nowrap" }, h("span", { class: "switch" }, toggle, h("span")),
      h("span", { class: "muted", text: s.enabled ? "on" : "off" }))),
    h("td", { class: "num muted", text: `v${s.version}` }),
    h("td", { style: "text-align:right;white-space:nowrap" },
      h("button", { class: "btn", type: "button", text: "Edit", "data-action": "edit",
        onclick: () => openEditor(settings.get(s.id)) }), " ",
      h("button", { class: "btn danger", type: "button", text: "Delete", "data-action": "delete",
        onclick: () => remove(s.id) })),
  ];
}

function put(s) {
  if (nameFilter && s.name !== nameFilter) return drop(s.id);
  const old = settings.get(s.id);
  if (old && old.version > s.version) return; // a late event: we already have newer
  settings.set(s.id, s);
  let tr = rows.get(s.id);
  if (!tr) {
    tr = h("tr", { "data-id": s.id, "data-name": s.name });
    rows.set(s.id, tr);
    const key = (x) => `${x.name}\u0000${x.id}`;
    const after = [...settings.values()].filter((o) => o.id !== s.id && key(o) > key(s))
      .sort((a, b) => (key(a) < key(b) ? -1 : 1))[0];
    $("settings").tBodies[0].insertBefore(tr, after ? rows.get(after.id) || null : null);
  }
  tr.dataset.name = s.name;
  tr.replaceChildren(...row(s));
  $("empty").hidden = settings.size > 0;
}

function drop(id) {
  settings.delete(id);
  rows.get(id)?.remove();
  rows.delete(id);
  $("empty").hidden = settings.size > 0;
}

function listError(text) {
  $("list-error").hidden = !text;
  $("list-error").textContent = text || "";
}

async function loadPage(cursor) {
  const q = new URLSearchParams({ limit: "50" });
  if (nameFilter) q.set("name", nameFilter);
  if (cursor) q.set("cursor", cursor);
  try {
    const { data } = await api(`/api/v1/settings?${q}`, { token });
    listError(null);
    if (!cursor) {
      // the first page again: what is gone (or filtered out) goes, the rest updates in place
      const ids = new Set(data.items.map((s) => s.id));
      for (const id of [...settings.keys()]) if (!ids.has(id)) drop(id);
    }
    for (const s of data.items) put(s);
    next = data.next || null;
    $("more-wrap").hidden = !next;
    $("empty").hidden = settings.size > 0;
  } catch (e) {
    if (e.status === 401) return signedOut();
    listError(`Could not load the settings: ${e.message}`);
  }
}

function reload() {
  return loadPage(null);
}

function signedOut() {
  sessionStorage.removeItem(SERVICE_TOKEN);
  token = "";
  showApp(false);
  $("svc-err").textContent = "The service token was not accepted; enter it again.";
}

$("more").addEventListener("click", () => loadPage(next));

let filterTimer = null;
$("filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    nameFilter = $("filter").value.trim();
    reload();
  }, 250);
});

function setLive(state) {
  $("live").className = `live ${state === "live" ? "on" : "down"}`;
  $("live").textContent = state === "live" ? "live" : "reconnecting…";
  // (re)connected: read the list now, so no change falls between the list and the stream
  if (state === "live") reload();
}

function followSettings() {
  if (stream) stream.close();
  stream = follow((after) => {
    const u = new URL("/api/v1/topics/settings/stream", location.origin);
    u.searchParams.set("token", token);
    if (after) u.searchParams.set("last_event_id", after);
    return u.toString();
  }, {
    entity(ev) {
      if (ev.op === "delete") drop(ev.id);
      else if (ev.data) put(ev.data);
    },
    reset() {
      reload();
    },
  }, setLive);
}

// ------------------------------------------------------------------ enable / delete
async function setEnabled(id, input) {
  const s = settings.get(id);
  input.disabled = true;
  try {
    const { data } = await api(`/api/v1/settings/${encodeURIComponent(id)}`, {
      token, method: "PATCH", body: { enabled: input.checked }, headers: { "If-Match": etagOf(s) },
    });
    put(data);
    toast(`${data.name} ${data.enabled ? "enabled" : "disabled"}`);
  } catch (e) {
    input.checked = s.enabled;
    input.disabled = false;
    toast(e.status === 412 ? "Changed elsewhere meanwhile: reloaded, try again."
      : `Could not change it: ${e.message}`, 4000);
    if (e.status === 412) reload();
  }
}

async function remove(id) {
  const s = settings.get(id);
  if (!s) return;
  const dialog = $("confirm");
  $("confirm-text").textContent = `“${s.name}” (${s.id}) stops alerting. This cannot be undone.`;
  dialog.returnValue = "";
  dialog.showModal();
  const answer = await new Promise((resolve) =>
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "delete") return;
  try {
    await api(`/api/v1/settings/${encodeURIComponent(id)}`, {
      token, method: "DELETE", headers: { "If-Match": etagOf(s) },
    });
    drop(id);
    toast(`Deleted ${s.name}`);
    if (editing && editing.id === id) closeEditor();
  } catch (e) {
    toast(e.status === 412 ? "Changed elsewhere meanwhile: reloaded, look again."
      : `Could not delete it: ${e.message}`, 4000);
    if (e.status === 412) reload();
  }
}

// ------------------------------------------------------------------ editor
const FIELDS = ["name", "metric", "channel"];

function clearErrors() {
  for (const f of FIELDS) {
    $(`err-${f}`).textContent = "";
    document.querySelector(`[data-field="${f}"]`).classList.remove("invalid");
    $(`f-${f}`).removeAttribute("aria-invalid");
  }
  $("form-error").hidden = true;
}

function fieldError(field, text) {
  $(`err-${field}`).textContent = text;
  document.querySelector(`[data-field="${field}"]`).classList.add("invalid");
  $(`f-${field}`).setAttribute("aria-invalid", "true");
}

function formError(text) {
  $("form-error").hidden = false;
  $("form-error").textContent = text;
}

function openEditor(s) {
  editing = s || null;
  clearErrors();
  $("editor-title").textContent = s ? `Edit ${s.name}` : "New setting";
  $("save").textContent = s ? "Save changes" : "Create";
  if (s) {
    $("f-name").value = s.name;
    $("f-enabled").checked = s.enabled;
    $("f-metric").value = JSON.stringify(s.metric, null, 2);
    $("f-channel").value = JSON.stringify(s.channel, null, 2);
  } else {
    $("f-name").value = "";
    $("f-enabled").checked = true;
  }
  $("editor").hidden = false;
  $("editor").scrollIntoView({ block: "nearest", behavior: "smooth" });
  $("f-name").focus();
}

function closeEditor() {
  editing = null;
  $("editor").hidden = true;
}

$("new").addEventListener("click", () => openEditor(null));
$("cancel").addEventListener("click", closeEditor);

function parseJson(field) {
  const text = $(`f-${field}`).value.trim() || "{}";
  try {
    return JSON.parse(text);
  } catch (e) {
    fieldError(field, `Not valid JSON: ${e.message}`);
    return undefined;
  }
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  const metric = parseJson("metric");
  const channel = parseJson("channel");
  if (metric === undefined || channel === undefined) return;
  const body = { name: $("f-name").value.trim(), metric, channel, enabled: $("f-enabled").checked };
  $("save").disabled = true;
  try {
    const path = editing ? `/api/v1/settings/${encodeURIComponent(editing.id)}` : "/api/v1/settings";
    const { data } = await api(path, {
      token, method: editing ? "PUT" : "POST", body,
      headers: editing ? { "If-Match": etagOf(editing) } : {},
    });
    put(data);
    toast(editing ? `Saved ${data.name}` : `Created ${data.name}`);
    closeEditor();
    rows.get(data.id)?.classList.add("flash");
  } catch (err) {
    showSaveError(err);
  } finally {
    $("save").disabled = false;
  }
});

/** The API's 422 names the field (`$.channel.email`): show its detail next to that field. */
function showSaveError(err) {
  if (!(err instanceof ApiError)) return formError(String(err));
  if (err.status === 401) return signedOut();
  if (err.status === 412) {
    return formError("Someone changed this setting meanwhile. Cancel and open it again to see " +
      "their version.");
  }
  const path = err.body.path || "";
  const m = /^\$\.(\w+)/.exec(path);
  if (m && FIELDS.includes(m[1])) {
    const detail = err.body.detail || err.message;
    const deeper = path.length > m[0].length && !detail.includes(path);
    fieldError(m[1], deeper ? `${detail} (at ${path})` : detail);
    $(`f-${m[1]}`).focus();
  } else {
    formError(err.body.detail || err.message);
  }
}

// ------------------------------------------------------------------ delivery log
const DLABEL = { skipped_read: "skipped (read)", skipped_pref: "skipped (user's choice)", skipped_no_address: "skipped (no address)", skipped_gone: "skipped (left the feeds)" };
const DSTATUS = { sent: "ok", failed: "bad", retrying: "warn", skipped_read: "off", skipped_pref: "off", skipped_no_address: "off", skipped_gone: "off" };

$("dlv-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("dlv-id").value.trim();
  $("dlv-err").textContent = "";
  const table = $("deliveries");
  try {
    const { data } = await api(`/api/v1/notices/${encodeURIComponent(id)}/deliveries`, { token });
    const items = data.items || [];
    table.tBodies[0].replaceChildren(...items.map((d) => h("tr", {},
      h("td", { class: "mono", text: d.uid }),
      h("td", { text: d.channel }),
      h("td", { class: "num", text: d.attempt }),
      h("td", {}, h("span", { class: `tag ${DSTATUS[d.status] || "info"}`, "data-status": d.status,
        title: d.status, text: DLABEL[d.status] || d.status })),
      h("td", { class: "muted", text: d.detail || "" }),
      h("td", { class: "muted", title: d.at ? new Date(d.at).toLocaleString() : "", text: ago(d.at) }))));
    table.hidden = items.length === 0;
    $("dlv-empty").hidden = items.length > 0;
  } catch (err) {
    table.hidden = true;
    $("dlv-empty").hidden = true;
    $("dlv-err").textContent = err.status === 404 ? "No such notice." : err.message;
  }
});

// ------------------------------------------------------------------ start
function start() {
  showApp(true);
  reload();
  followSettings(); // and again on each `open`: nothing falls between the list and the stream
  loadSilences();
}

if (token) start();
else {
  showApp(false);
  $("svc").focus();
}
