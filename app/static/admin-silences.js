// /admin's Silences section: list (active, pending, then expired: the API's order), create
// (matchers, a duration or an end time, a comment) and expire, with the page's service
// token. Every text from the API is set as text, never as HTML.
import { api, ApiError, h, SERVICE_TOKEN, toast } from "/static/lib.js";

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(SERVICE_TOKEN) || "";
const MATCHERS = ["alert", "severity", "entity_topic", "entity_id"];
const FIELDS = [...MATCHERS, "ends_at", "comment", "created_by"];
const STATE = { active: "ok", pending: "warn", expired: "off" };

const when = (ms) => new Date(ms).toLocaleString();

function row(s) {
  const m = s.matchers || {};
  const tags = MATCHERS.filter((k) => m[k] != null)
    .map((k) => h("span", { class: "tag info", "data-matcher": k, text: `${k}=${m[k]}` }));
  const expire = s.state === "expired" ? null : h("button", {
    class: "btn danger", type: "button", text: "Expire", "data-action": "expire",
    onclick: () => expireOne(s, expire),
  });
  return h("tr", { "data-id": s.id, "data-state": s.state },
    h("td", {}, h("span", { class: "row" }, tags), h("br"),
      h("span", { class: "muted mono", text: s.id })),
    h("td", {}, h("span", { class: `tag ${STATE[s.state] || "info"}`, text: s.state })),
    h("td", { class: "muted", text: when(s.starts_at) }),
    h("td", { class: "muted", text: when(s.ends_at) }),
    h("td", { text: s.comment || "" }),
    h("td", { class: "muted", text: s.created_by || "" }),
    h("td", { style: "text-align:right" }, expire));
}

function formError(text) {
  $("sil-error").hidden = !text;
  $("sil-error").textContent = text || "";
}

function clearErrors() {
  for (const f of FIELDS) $(`sil-err-${f}`).textContent = "";
  for (const el of document.querySelectorAll("[data-sil]")) el.classList.remove("invalid");
  formError(null);
}

export async function loadSilences() {
  try {
    const { data } = await api("/api/v1/silences", { token: token() });
    $("silences").tBodies[0].replaceChildren(...data.items.map(row));
    $("silences").hidden = data.items.length === 0;
    $("sil-empty").hidden = data.items.length > 0;
  } catch (e) {
    formError(`Could not load the silences: ${e.message}`);
  }
}

async function expireOne(s, button) {
  button.disabled = true;
  try {
    await api(`/api/v1/silences/${encodeURIComponent(s.id)}`, { token: token(), method: "DELETE" });
    toast("Silence expired");
  } catch (e) {
    toast(`Could not expire it: ${e.message}`, 4000);
  }
  await loadSilences();
}

function body() {
  const out = { matchers: {} };
  for (const k of MATCHERS) {
    const v = $(`sil-${k}`).value.trim();
    if (v) out.matchers[k] = v;
  }
  const ends = $("sil-ends").value;
  out.ends_at = ends ? new Date(ends).getTime()
    : Date.now() + Number($("sil-duration").value) * 1000;
  for (const k of ["comment", "created_by"]) out[k] = $(`sil-${k}`).value.trim();
  return out;
}

/** The API's 422 names the field (`$.matchers.alert`, `$.ends_at`): show it next to it. */
function showError(err) {
  if (!(err instanceof ApiError)) return formError(String(err));
  const path = err.body.path || "";
  const field = /^\$\.(?:matchers\.)?(\w+)$/.exec(path)?.[1];
  if (field && FIELDS.includes(field)) {
    $(`sil-err-${field}`).textContent = err.body.detail || err.message;
    document.querySelector(`[data-sil="${field}"]`)?.classList.add("invalid");
  } else {
    formError(err.body.detail || err.message);
  }
}

$("sil-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  $("sil-create").disabled = true;
  try {
    const { data } = await api("/api/v1/silences", { token: token(), method: "POST", body: body() });
    toast("Silence created");
    for (const k of [...MATCHERS, "comment"]) $(`sil-${k}`).value = "";
    $("sil-ends").value = "";
    await loadSilences();
    document.querySelector(`#silences tr[data-id="${data.id}"]`)?.classList.add("flash");
  } catch (err) {
    showError(err);
  } finally {
    $("sil-create").disabled = false;
  }
});

$("sil-reload").addEventListener("click", loadSilences);
