// /demo/vms: the snapshot of topic `vm`, then its live events (no request per event).
import { api, ago, follow, h, USER_TOKEN } from "/static/lib.js";

const TOPIC = "vm";
const token = sessionStorage.getItem(USER_TOKEN) || "";
const tbody = document.querySelector("#vms tbody");
const live = document.getElementById("live");
const errorBox = document.getElementById("error");
const empty = document.getElementById("empty");
const countEl = document.getElementById("vm-count");
const vms = new Map(); // id -> {data, ts}
const rows = new Map(); // id -> <tr>

const STATUS = {
  running: "ok", installing: "info", starting: "info", rebooting: "warn", stopping: "warn",
  stopped: "off", failed: "bad", error: "bad",
};

function pct(v) {
  const n = Number(v);
  if (v === undefined || v === null || Number.isNaN(n)) return h("span", { class: "muted", text: "—" });
  const level = n >= 90 ? " bad" : n >= 75 ? " warn" : "";
  return h("span", {}, h("span", { class: `bar${level}`, "aria-hidden": "true" },
    h("i", { style: `width:${Math.max(0, Math.min(100, n))}%` })), `${Math.round(n)}%`);
}

function cells(id, vm) {
  const d = vm.data || {};
  const status = String(d.status ?? "unknown");
  return [
    h("td", {}, h("strong", { text: d.name || `vm ${id}` }), " ",
      h("span", { class: "muted mono", text: `#${id}` })),
    h("td", {}, h("span", { class: `tag ${STATUS[status] || "off"}`, "data-status": status,
      text: status })),
    h("td", { class: "num" }, pct(d.cpu)),
    h("td", { class: "num" }, pct(d.mem ?? d.memory)),
    h("td", { class: "num" }, pct(d.disk)),
    h("td", { class: "muted", "data-ts": vm.ts || "", text: vm.ts ? ago(vm.ts) : "—" }),
  ];
}

function byName(a, b) {
  const x = String(vms.get(a)?.data?.name ?? a);
  const y = String(vms.get(b)?.data?.name ?? b);
  return x.localeCompare(y, undefined, { numeric: true });
}

function put(id, vm, flash) {
  vms.set(id, vm);
  let tr = rows.get(id);
  if (!tr) {
    tr = h("tr", { "data-id": id });
    rows.set(id, tr);
    const after = [...rows.keys()].filter((k) => k !== id && byName(k, id) > 0).sort(byName)[0];
    tbody.insertBefore(tr, after ? rows.get(after) : null);
  }
  tr.replaceChildren(...cells(id, vm));
  if (flash) {
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }
  summary();
}

function drop(id) {
  vms.delete(id);
  rows.get(id)?.remove();
  rows.delete(id);
  summary();
}

function summary() {
  empty.hidden = vms.size > 0;
  countEl.textContent = vms.size ? `(${vms.size})` : "";
}

function setLive(state) {
  live.className = `live ${state === "live" ? "on" : "down"}`;
  live.textContent = state === "live" ? "live" : "reconnecting…";
}

async function loadSnapshot() {
  const { data } = await api(`/api/v1/topics/${TOPIC}`, { token });
  for (const id of [...rows.keys()]) if (!(id in data.items)) drop(id);
  for (const [id, entity] of Object.entries(data.items)) put(id, { data: entity, ts: 0 }, false);
  return data.last_id;
}

function streamUrl(after) {
  const u = new URL(`/api/v1/topics/${TOPIC}/stream`, location.origin);
  if (token) u.searchParams.set("token", token);
  if (after) u.searchParams.set("last_event_id", after);
  return u.toString();
}

async function main() {
  if (!token) {
    errorBox.hidden = false;
    errorBox.textContent = "Not signed in: open this page with ?token=<user token>.";
    setLive("down");
    return;
  }
  let lastId;
  try {
    lastId = await loadSnapshot();
  } catch (e) {
    errorBox.hidden = false;
    errorBox.textContent = `Could not load the machines: ${e.message}`;
    setLive("down");
    return;
  }
  summary();
  // the stream starts right after the snapshot's position: nothing missed, nothing twice
  const stream = follow((after) => streamUrl(after || lastId), {
    entity(ev) {
      if (ev.op === "delete") drop(ev.id);
      else {
        // flash a row when it appears or its status changes, not on every metric tick
        const before = vms.get(ev.id);
        const data = ev.data || before?.data || {};
        put(ev.id, { data, ts: ev.ts }, !before || before.data.status !== data.status);
      }
    },
    async reset() {
      // the stream was trimmed past our position: reload the snapshot, then follow again
      try {
        stream.restart(await loadSnapshot());
      } catch (e) {
        errorBox.hidden = false;
        errorBox.textContent = `Could not reload the machines: ${e.message}`;
      }
    },
  }, setLive);
  setInterval(() => {
    for (const td of tbody.querySelectorAll("td[data-ts]")) {
      if (td.dataset.ts) td.textContent = ago(Number(td.dataset.ts));
    }
  }, 15000);
}

main();
