// Helpers shared by the Vestnik pages (not by the widget, which is self-contained).

export const USER_TOKEN = "vestnik_token";
export const SERVICE_TOKEN = "vestnik_service_token";

/** Take `?token=` from the address bar into this tab's sessionStorage (and out of the URL,
 * so it is not bookmarked, shared or shown); return the tab's token. */
export function takeToken(key = USER_TOKEN) {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem(key, given);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(key) || "";
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** fetch JSON with a bearer token; errors are the API's {error, detail, path} as ApiError. */
export async function api(path, { token, method = "GET", body, headers = {} } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: {
        Accept: "application/json",
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { "Content-Type": "application/json" } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
  } catch {
    throw new ApiError(0, { error: "network", detail: "the server cannot be reached" });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return { data, etag: res.headers.get("ETag"), status: res.status };
}

export function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) if (kid != null && kid !== false) e.append(kid);
  return e;
}

const rtf = new Intl.RelativeTimeFormat(navigator.language || "en", { numeric: "auto" });

export function ago(ms) {
  if (!ms) return "";
  if (ms < 1e12) ms *= 1000;
  const s = Math.round((ms - Date.now()) / 1000);
  const a = Math.abs(s);
  if (a < 45) return "just now";
  if (a < 3600) return rtf.format(Math.round(s / 60), "minute");
  if (a < 86400) return rtf.format(Math.round(s / 3600), "hour");
  return new Date(ms).toLocaleString();
}

export function toast(text, ms = 2500) {
  const t = h("div", { class: "toast", role: "status", text });
  document.body.append(t);
  setTimeout(() => t.remove(), ms);
}

/**
 * A resumable EventSource: the browser resumes with Last-Event-ID by itself after a drop;
 * when it gives up (the server answered an error, e.g. while restarting) we open a new one
 * with `last_event_id=` so the server still replays what we missed.
 */
export function follow(urlFor, handlers, onState = () => {}) {
  let es = null;
  let lastId = null;
  let tries = 0;
  let stopped = false;
  let timer = null;
  const open = () => {
    es = new EventSource(urlFor(lastId));
    es.addEventListener("open", () => {
      tries = 0;
      onState("live");
    });
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        let data = null;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        fn(data, e);
      });
    }
    es.addEventListener("error", () => {
      if (stopped) return;
      onState("reconnecting");
      if (es.readyState === EventSource.CLOSED) {
        const wait = Math.min(30000, 500 * 2 ** tries++) * (0.75 + Math.random() / 2);
        timer = setTimeout(open, wait);
      }
    });
  };
  open();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      if (es) es.close();
    },
    /** Start again from `id` (after a reset: the caller reloaded the snapshot). */
    restart(id) {
      lastId = id;
      if (es) es.close();
      clearTimeout(timer);
      open();
    },
    get lastId() {
      return lastId;
    },
  };
}
