/*
 * <vestnik-inbox>: the Vestnik notification inbox as one custom element.
 *
 *   <script src="https://vestnik.example.com/static/vestnik-inbox.js" defer></script>
 *   <vestnik-inbox api="https://vestnik.example.com" token="USER_JWT"></vestnik-inbox>
 *
 * Attributes
 *   api      base URL of Vestnik (default: where this script came from)
 *   token    the user's token (JWT); default: the tab's sessionStorage `vestnik_token`
 *   mode     "popover" (a bell that opens a panel; default) or "page" (the panel inline)
 *   with-credentials  send cookies cross-origin (the `vestnik_token` cookie of the Vestnik
 *            host) instead of a token: fetch credentials "include", EventSource withCredentials
 *   limit    notices per page (default 20)
 *
 * Incidents (notices with a `dedup_key`) show their state in words: "Firing for 12 min" (the
 * duration grows, redrawn with the relative times by one 30 s interval for the whole list)
 * or "Resolved 3 minutes ago · lasted 12 min"; a live `notice-update` redraws the item and
 * never changes the unread count. "Firing only" filters the loaded items in the browser
 * (the feed API has no status filter; infinite scroll keeps loading older pages while the
 * filtered list is short). Host attribute `firing-only` mirrors the toggle.
 *
 * Events (on the element): `vestnik-count` {count}, `vestnik-notice` {notice} for each new
 * live notice, and `vestnik-open` {notice} before following a notice's link (cancel it with
 * preventDefault() to route inside your SPA instead).
 *
 * Self-contained on purpose (no imports, no build step): it works as a classic or a module
 * script and from any origin the server lists in VESTNIK_CORS_ORIGINS.
 */
(() => {
  "use strict";
  if (customElements.get("vestnik-inbox")) return;

  const TOKEN_KEY = "vestnik_token";
  const SCRIPT_ORIGIN = (() => {
    try {
      return document.currentScript ? new URL(document.currentScript.src).origin : null;
    } catch {
      return null;
    }
  })();
  const SEVERITY = { info: "Info", warning: "Warning", critical: "Critical" };
  const BELL =
    '<svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true" focusable="false">' +
    '<path fill="currentColor" d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 ' +
    '7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-1.7 1.7A1 1 0 0 0 4 19.4h16a1 ' +
    '1 0 0 0 .7-1.7Z"/></svg>';

  const CSS = `
:host { display: inline-block; position: relative; font: inherit; color: var(--vn-fg);
  --vn-fg: #1f2328; --vn-muted: #656d76; --vn-bg: #fff; --vn-soft: #f6f8fa; --vn-line: #d8dee4;
  --vn-accent: #0969da; --vn-unread: #f0f7ff; --vn-info: #0969da; --vn-warning: #bf8700;
  --vn-critical: #cf222e; --vn-ok: #1a7f37; --vn-radius: 10px; }
:host([mode="page"]) { display: block; }
@media (prefers-color-scheme: dark) {
  :host { --vn-fg: #e6edf3; --vn-muted: #9198a1; --vn-bg: #161b22; --vn-soft: #0d1117;
    --vn-line: #30363d; --vn-accent: #4493f8; --vn-unread: #12263f; --vn-info: #4493f8;
    --vn-warning: #d29922; --vn-critical: #f85149; --vn-ok: #3fb950; }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0);
  white-space: nowrap; }
button { font: inherit; color: inherit; }
:focus-visible { outline: 2px solid var(--vn-accent); outline-offset: 2px; }
.hit:focus-visible { outline-offset: -2px; border-radius: 2px; } /* inside: never clipped */
.bell { position: relative; display: inline-flex; align-items: center; justify-content: center;
  width: 40px; height: 40px; border: 1px solid var(--vn-line); border-radius: 50%;
  background: var(--vn-bg); cursor: pointer; color: var(--vn-fg); }
.bell:hover { background: var(--vn-soft); }
.badge { position: absolute; top: -4px; right: -6px; min-width: 20px; height: 20px;
  padding: 0 6px; border-radius: 10px; background: var(--vn-critical); color: #fff;
  font-size: 12px; font-weight: 600; line-height: 20px; text-align: center;
  box-shadow: 0 0 0 2px var(--vn-bg); font-variant-numeric: tabular-nums; }
.head-bell { position: relative; display: inline-flex; color: var(--vn-muted); margin-right: 8px; }
.head-bell .badge { top: -9px; right: -15px; min-width: 18px; height: 18px; line-height: 18px;
  font-size: 11px; padding: 0 5px; }
.panel { background: var(--vn-bg); border: 1px solid var(--vn-line); border-radius: var(--vn-radius);
  overflow: hidden; }
:host(:not([mode="page"])) .panel { position: absolute; z-index: 1000; right: 0; top: 48px;
  width: min(400px, 92vw); box-shadow: 0 12px 32px rgba(31, 35, 40, .16); }
:host(:not([mode="page"])) .scroll { max-height: min(70vh, 560px); overflow-y: auto;
  overscroll-behavior: contain; }
header { display: flex; align-items: center; flex-wrap: wrap; gap: 8px 12px; padding: 14px 16px;
  border-bottom: 1px solid var(--vn-line); }
header h2 { margin: 0; font-size: 16px; font-weight: 600; }
.pill { font-size: 12px; color: var(--vn-muted); font-variant-numeric: tabular-nums;
  white-space: nowrap; }
:host(:not([mode="page"])) .pill { display: none; }
@media (max-width: 480px) { .pill { display: none; } .hit { padding: 12px; } }
header h2, .seg button, .link { white-space: nowrap; }
.tools { margin-left: auto; display: flex; gap: 8px; align-items: center; }
.seg { display: inline-flex; border: 1px solid var(--vn-line); border-radius: 6px; overflow: hidden; }
.seg button { border: 0; background: transparent; padding: 4px 10px; font-size: 13px;
  cursor: pointer; color: var(--vn-muted); }
.seg button[aria-pressed="true"], .toggle[aria-pressed="true"] { background: var(--vn-soft);
  color: var(--vn-fg); font-weight: 600; }
.toggle { border: 1px solid var(--vn-line); border-radius: 6px; background: transparent;
  padding: 4px 10px; font-size: 13px; cursor: pointer; color: var(--vn-muted);
  white-space: nowrap; }
.link { border: 0; background: none; color: var(--vn-accent); cursor: pointer; font-size: 13px;
  padding: 4px 2px; }
.link:disabled { color: var(--vn-muted); cursor: default; }
.banner { display: flex; align-items: center; gap: 8px; padding: 8px 16px; font-size: 13px;
  background: #fff8c5; color: #633c01; border-bottom: 1px solid #eed888; }
.banner.bad { background: #ffebe9; color: #82071e; border-color: #ffcecb; }
.spin { width: 12px; height: 12px; border: 2px solid currentColor; border-right-color: transparent;
  border-radius: 50%; animation: spin .8s linear infinite; flex: none; }
@keyframes spin { to { transform: rotate(360deg); } }
ul { list-style: none; margin: 0; padding: 0; }
li { border-bottom: 1px solid var(--vn-line); }
li:last-child { border-bottom: 0; }
.hit { display: flex; gap: 12px; width: 100%; padding: 12px 16px; text-align: left;
  border: 0; background: none; cursor: pointer; color: inherit; text-decoration: none; }
.hit:hover { background: var(--vn-soft); }
.unread .hit { background: var(--vn-unread); }
.unread .hit:hover { filter: brightness(0.98); }
.icon { flex: none; display: grid; place-items: center; width: 24px; height: 24px;
  margin-top: -1px; border-radius: 50%; font-size: 13px; font-weight: 700;
  font-family: ui-monospace, Menlo, Consolas, monospace; }
.sev-info .icon { color: var(--vn-info); background: color-mix(in srgb, var(--vn-info) 14%, transparent); }
.sev-warning .icon { color: var(--vn-warning);
  background: color-mix(in srgb, var(--vn-warning) 18%, transparent); }
.sev-critical .icon { color: #fff; background: var(--vn-critical); }
.main { flex: 1; min-width: 0; }
.title { font-size: 14px; line-height: 20px; overflow-wrap: anywhere; }
.unread .title { font-weight: 600; }
.body { margin-top: 2px; font-size: 13px; line-height: 18px; color: var(--vn-muted);
  display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;
  overflow-wrap: anywhere; }
.meta { margin-top: 4px; font-size: 12px; color: var(--vn-muted); display: flex; gap: 6px;
  flex-wrap: wrap; align-items: center; }
.sev { font-weight: 600; }
.sev-warning .sev { color: var(--vn-warning); }
.sev-critical .sev { color: var(--vn-critical); }
.sev-info .sev { color: var(--vn-info); }
.repeat { border: 1px solid var(--vn-line); border-radius: 8px; padding: 0 6px; }
/* an incident's state: words first, colour second (it reads the same without colour) */
.inc { display: inline-flex; align-items: center; gap: 4px; border-radius: 8px; padding: 0 6px;
  font-weight: 600; white-space: nowrap; }
.inc-firing { color: var(--vn-critical);
  background: color-mix(in srgb, var(--vn-critical) 12%, transparent); }
.inc-resolved { color: var(--vn-ok);
  background: color-mix(in srgb, var(--vn-ok) 14%, transparent); }
.inc-silenced { color: var(--vn-muted); border: 1px dashed var(--vn-line); font-weight: 400; }
.inc .mark { font-size: 10px; }
.inc time, .inc .lasted { font-weight: 400; }
.dot { flex: none; width: 8px; height: 8px; margin-top: 7px; border-radius: 50%;
  background: var(--vn-accent); visibility: hidden; }
.unread .dot { visibility: visible; }
li.fresh .hit { animation: fresh 1.6s ease-out; }
@keyframes fresh { from { background: color-mix(in srgb, var(--vn-accent) 12%, var(--vn-bg)); } }
.state { padding: 40px 24px; text-align: center; color: var(--vn-muted); font-size: 14px; }
.state strong { display: block; color: var(--vn-fg); font-size: 15px; margin-bottom: 4px; }
.state button { margin-top: 12px; }
.state .note { font-size: 12px; }
.btn { border: 1px solid var(--vn-line); background: var(--vn-soft); border-radius: 6px;
  padding: 5px 12px; cursor: pointer; font-size: 13px; }
.more { padding: 12px; text-align: center; font-size: 13px; color: var(--vn-muted);
  display: flex; justify-content: center; gap: 8px; align-items: center; }
.sentinel { height: 1px; }
form.tok { display: flex; gap: 8px; margin-top: 12px; justify-content: center;
  align-items: center; }
form.tok button { margin-top: 0; }
form.tok input { flex: 1; max-width: 320px; padding: 5px 8px; border: 1px solid var(--vn-line);
  border-radius: 6px; font: inherit; font-size: 13px; background: var(--vn-bg); color: inherit; }
`;

  const fmt = (() => {
    let rtf;
    try {
      rtf = new Intl.RelativeTimeFormat(navigator.language || "en", { numeric: "auto" });
    } catch {
      rtf = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
    }
    return (ms) => {
      const s = Math.round((ms - Date.now()) / 1000);
      const a = Math.abs(s);
      if (a < 45) return "just now";
      if (a < 3600) return rtf.format(Math.round(s / 60), "minute");
      if (a < 86400) return rtf.format(Math.round(s / 3600), "hour");
      if (a < 7 * 86400) return rtf.format(Math.round(s / 86400), "day");
      return new Date(ms).toLocaleDateString();
    };
  })();

  /** A duration as people say it: "45 sec", "12 min", "3 hr 5 min", "2 days 4 hr".
   * `coarse`: whole minutes only ("<1 min"), for a duration that keeps growing on screen
   * and is redrawn every 30 s. */
  const dur = (() => {
    const unit = (u) => {
      const o = { style: "unit", unit: u, unitDisplay: "short" };
      try {
        return new Intl.NumberFormat(navigator.language || "en", o);
      } catch {
        return new Intl.NumberFormat("en", o);
      }
    };
    const [sec, min, hr, day] = ["second", "minute", "hour", "day"].map(unit);
    const two = (big, a, small, b) => (b ? `${big.format(a)} ${small.format(b)}` : big.format(a));
    return (ms, coarse = false) => {
      const s = Math.max(0, Math.floor(ms / 1000));
      if (s < 60) return coarse ? `<${min.format(1)}` : sec.format(s);
      const m = Math.floor(s / 60);
      if (m < 60) return min.format(m);
      const hours = Math.floor(m / 60);
      if (hours < 24) return two(hr, hours, min, m % 60);
      return two(day, Math.floor(hours / 24), hr, hours % 24);
    };
  })();

  const toMs = (t) => (typeof t === "number" ? (t < 1e12 ? t * 1000 : t) : Date.parse(t) || 0);
  const num = (x) => (typeof x === "number" ? x : Number(x) || 0);

  function h(tag, attrs = {}, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) if (kid != null) e.append(kid);
    return e;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  class VestnikInbox extends HTMLElement {
    static get observedAttributes() {
      return ["api", "token", "mode", "with-credentials"];
    }

    constructor() {
      super();
      this.root = this.attachShadow({ mode: "open" });
      this.items = new Map(); // id -> notice (dedupe: one node per id, whatever path it came by)
      this.nodes = new Map(); // id -> <li>
      this.count = 0;
      this.next = null;
      this.loading = false;
      this.filter = "all";
      this.firingOnly = false; // client-side: the feed API has no status filter
      this.lastSeq = null;
      this.countSeq = 0; // the feed seq the last `count` event covers
      this.topSeq = 0;
      this.listed = false;
      this.es = null;
      this.retry = 0;
      this.generation = 0; // bumped by stop(): stale stream callbacks and timers do nothing
      this.listGen = 0; // bumped whenever the list starts over: stale page loads are dropped
      this.timers = new Set();
      this.build();
    }

    get api() {
      const a = this.getAttribute("api") || SCRIPT_ORIGIN || location.origin;
      return a.replace(/\/+$/, "");
    }

    get token() {
      return this.getAttribute("token") || sessionStorage.getItem(TOKEN_KEY) || "";
    }

    get credentials() {
      return this.hasAttribute("with-credentials");
    }

    get isPage() {
      return this.getAttribute("mode") === "page";
    }

    get limit() {
      return Math.min(200, Math.max(1, parseInt(this.getAttribute("limit") || "20", 10) || 20));
    }

    // ---------------------------------------------------------------- layout
    build() {
      const r = this.root;
      r.append(h("style", { text: CSS }));
      this.bell = h("button", {
        class: "bell", type: "button", part: "bell", "aria-haspopup": "true",
        "aria-expanded": "false", onclick: () => this.toggle(),
      });
      this.bell.innerHTML = BELL;
      this.badge = h("span", { class: "badge", hidden: true, "aria-hidden": "true" });
      this.bell.append(this.badge);
      this.pill = h("span", { class: "pill" });
      // page mode: the bell sits in the header, showing the count (nothing to open)
      this.headBell = h("span", { class: "head-bell", "aria-hidden": "true" });
      this.headBell.innerHTML = BELL;
      this.headBadge = h("span", { class: "badge", hidden: true });
      this.headBell.append(this.headBadge);
      this.allBtn = h("button", { type: "button", "aria-pressed": "true", text: "All",
        onclick: () => this.setFilter("all") });
      this.unreadBtn = h("button", { type: "button", "aria-pressed": "false", text: "Unread",
        onclick: () => this.setFilter("unread") });
      this.firingBtn = h("button", { class: "toggle", type: "button", "aria-pressed": "false",
        text: "Firing only", title: "Show only incidents that are still firing",
        onclick: () => this.setFiringOnly(!this.firingOnly) });
      this.markAll = h("button", { class: "link", type: "button", text: "Mark all read",
        onclick: () => this.readAll() });
      this.banner = h("div", { class: "banner", role: "status", hidden: true });
      this.list = h("ul", { role: "list", "aria-label": "Notifications",
        onkeydown: (e) => this.onListKey(e) });
      this.state = h("div", { class: "state", hidden: true });
      this.more = h("div", { class: "more", hidden: true });
      this.sentinel = h("div", { class: "sentinel", "aria-hidden": "true" });
      this.scroll = h("div", { class: "scroll" }, this.banner, this.list, this.state, this.more,
        this.sentinel);
      this.panel = h("section", { class: "panel", part: "panel", "aria-label": "Notifications" },
        h("header", {},
          this.headBell, h("h2", { text: "Notifications" }), this.pill,
          this.tools = h("div", { class: "tools" },
            h("div", { class: "seg", role: "group", "aria-label": "Show" }, this.allBtn,
              this.unreadBtn),
            this.firingBtn, this.markAll)),
        this.scroll);
      this.live = h("div", { class: "sr", "aria-live": "polite", "aria-atomic": "true" });
      r.append(this.bell, this.panel, this.live);
      this.onDocClick = (e) => {
        if (!this.isPage && !this.panel.hidden && !e.composedPath().includes(this)) this.close();
      };
      this.onKey = (e) => {
        if (e.key === "Escape" && !this.isPage && !this.panel.hidden) {
          this.close();
          this.bell.focus();
        }
      };
    }

    layout() {
      const page = this.isPage;
      // infinite scroll: the sentinel below the list, seen by the page or by the popover
      if (this.io) this.io.disconnect();
      this.io = new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) this.maybeMore();
      }, { root: page ? null : this.scroll, rootMargin: "200px" });
      this.io.observe(this.sentinel);
      this.bell.hidden = page;
      this.headBell.hidden = !page;
      this.panel.hidden = !page;
      this.panel.setAttribute("role", page ? "region" : "dialog");
    }

    toggle() {
      if (this.panel.hidden) this.openPanel();
      else this.close();
    }

    openPanel() {
      this.panel.hidden = false;
      this.bell.setAttribute("aria-expanded", "true");
      const first = this.list.querySelector("li:not([hidden]) .hit");
      (first || this.markAll).focus({ preventScroll: true });
      this.maybeMore();
    }

    close() {
      this.panel.hidden = true;
      this.bell.setAttribute("aria-expanded", "false");
    }

    // ---------------------------------------------------------------- lifecycle
    connectedCallback() {
      this.layout();
      document.addEventListener("click", this.onDocClick, true);
      document.addEventListener("keydown", this.onKey);
      this.tick = setInterval(() => this.refreshTimes(), 30000);
      this.start();
    }

    disconnectedCallback() {
      document.removeEventListener("click", this.onDocClick, true);
      document.removeEventListener("keydown", this.onKey);
      clearInterval(this.tick);
      this.tick = null;
      if (this.io) this.io.disconnect();
      this.stop();
    }

    attributeChangedCallback(name, old, value) {
      // (an upgrade reports every attribute before connectedCallback: that one starts us)
      if (old === value || !this.isConnected || !this.tick) return;
      if (name === "mode") this.layout();
      else this.start();
    }

    stop() {
      this.generation++;
      if (this.es) this.es.close();
      this.es = null;
      for (const t of this.timers) clearTimeout(t);
      this.timers.clear();
    }

    later(fn, ms) {
      const t = setTimeout(() => {
        this.timers.delete(t);
        fn();
      }, ms);
      this.timers.add(t);
    }

    start() {
      this.stop();
      this.listGen++;
      this.items.clear();
      this.nodes.clear();
      this.list.replaceChildren();
      this.next = null;
      this.lastSeq = null;
      this.countSeq = 0;
      this.topSeq = 0; // the highest feed seq shown
      this.listed = false; // the first page is in
      this.setBanner(null);
      if (!this.token && !this.credentials) {
        this.setCount(0);
        this.showState("signin");
        return;
      }
      this.showState("loading");
      // subscribe first, then read the first page: a notice that lands in between comes by
      // both paths and is shown once (items are keyed by id)
      this.connect();
      this.loadFirst();
    }

    // ---------------------------------------------------------------- HTTP
    async request(path, opts = {}) {
      const res = await fetch(this.api + path, {
        ...opts,
        credentials: this.credentials ? "include" : "same-origin",
        headers: { Accept: "application/json",
          ...(this.token ? { Authorization: `Bearer ${this.token}` } : {}),
          ...(opts.body ? { "Content-Type": "application/json" } : {}) },
      });
      const text = await res.text();
      let body = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {
        body = null;
      }
      if (!res.ok) throw new ApiError(res.status, body);
      return body;
    }

    query(cursor) {
      // "firing only" filters the loaded pages here: bigger pages find incidents sooner
      const limit = this.firingOnly ? Math.max(this.limit, 100) : this.limit;
      const q = new URLSearchParams({ limit: String(limit) });
      if (this.filter === "unread") q.set("unread", "true");
      if (cursor) q.set("cursor", cursor);
      return `/api/v1/me/notices?${q}`;
    }

    async loadFirst() {
      const gen = this.listGen;
      this.loading = true;
      try {
        const page = await this.request(this.query(null));
        if (gen !== this.listGen) return;
        this.next = page.next ?? null;
        for (const n of page.items || []) this.upsert(n, false);
        this.listed = true;
        this.afterLoad();
      } catch (e) {
        if (gen !== this.listGen) return;
        this.showError(e);
      } finally {
        if (gen === this.listGen) this.loading = false;
      }
      if (gen !== this.listGen) return;
      // the stream started after our page was read, and the feed grew in between: those
      // notices came by neither path, so read the first page again
      if (this.listed && this.countSeq > this.topSeq) this.resync();
      this.maybeMore();
    }

    async maybeMore() {
      if (this.loading || !this.next || (!this.isPage && this.panel.hidden)) return;
      const rect = this.sentinel.getBoundingClientRect();
      const bottom = this.isPage ? window.innerHeight : this.scroll.getBoundingClientRect().bottom;
      if (rect.top > bottom + 200) return;
      const gen = this.listGen;
      this.loading = true;
      this.more.hidden = false;
      this.more.replaceChildren(h("span", { class: "spin", "aria-hidden": "true" }),
        h("span", { text: "Loading older notices…" }));
      try {
        const page = await this.request(this.query(this.next));
        if (gen !== this.listGen) return;
        this.next = page.next ?? null;
        for (const n of page.items || []) this.upsert(n, false);
        this.afterLoad();
      } catch (e) {
        if (gen !== this.listGen) return;
        this.more.replaceChildren(h("span", { text: `Could not load more (${e.message}).` }),
          h("button", { class: "link", type: "button", text: "Retry",
            onclick: () => this.maybeMore() }));
        return;
      } finally {
        if (gen === this.listGen) this.loading = false;
      }
      // the next page may still be in view (short pages, tall screens)
      requestAnimationFrame(() => this.maybeMore());
    }

    afterLoad() {
      this.showState(this.shownCount() === 0 ? "empty" : null);
      if (this.next) {
        this.more.hidden = true;
      } else if (this.items.size > this.limit) {
        this.more.hidden = false;
        this.more.replaceChildren(h("span", { text: "That's everything." }));
      } else {
        this.more.hidden = true;
      }
    }

    // ---------------------------------------------------------------- live stream
    connect() {
      if (this.es) this.es.close();
      const gen = this.generation;
      const u = new URL(this.api + "/api/v1/me/stream");
      if (this.token) u.searchParams.set("token", this.token);
      // a fresh EventSource has no Last-Event-ID: carry it ourselves
      if (this.lastSeq) u.searchParams.set("last_event_id", this.lastSeq);
      const es = new EventSource(u.toString(), { withCredentials: this.credentials });
      this.es = es;
      es.addEventListener("open", () => {
        if (gen !== this.generation) return;
        this.retry = 0;
        this.setBanner(null);
        if (this.getAttribute("state") === "error") {
          this.reloadList(); // the server is back: recover from a failed first load
        } else if (this.dropped) {
          this.resync();
        }
        this.dropped = false;
      });
      es.addEventListener("count", (e) => this.onCount(e));
      es.addEventListener("reset", (e) => this.onReset(e));
      es.addEventListener("notice", (e) => this.onNotice(e, true));
      es.addEventListener("notice-update", (e) => this.onNotice(e, false));
      es.addEventListener("read", (e) => this.onRead(e));
      es.addEventListener("error", () => {
        if (gen !== this.generation || es !== this.es) return;
        // Reconnect ourselves rather than let the browser do it: its Last-Event-ID is only
        // the last *notice* id, while we also know the feed position from `count`, and it
        // gives up for good on an error status (e.g. 503 while the server restarts).
        es.close();
        this.es = null;
        this.dropped = true;
        const wait = Math.min(30000, 400 * 2 ** this.retry++) * (0.75 + Math.random() / 2);
        this.setBanner("Reconnecting…");
        this.later(() => this.checkAndConnect(gen), wait);
      });
    }

    async checkAndConnect(gen) {
      if (gen !== this.generation) return;
      try {
        await this.request("/api/v1/me/unread-count");
      } catch (e) {
        if (gen !== this.generation) return;
        if (e instanceof ApiError && e.status === 401) {
          this.setBanner("Your session has expired: sign in again.", true);
          return;
        }
      }
      if (gen === this.generation) this.connect();
    }

    /** After a drop: the stream replays from Last-Event-ID; also refresh what it cannot
     * (the first page, for read changes made while we were away). */
    async resync() {
      const gen = this.listGen;
      try {
        // (the count is not fetched here: the stream's `count` event is the exact one)
        const page = await this.request(this.query(null));
        if (gen !== this.listGen) return;
        for (const n of page.items || []) this.upsert(n, false);
        if (this.items.size === 0) this.next = page.next ?? null;
        this.afterLoad();
      } catch {
        /* the stream will tell us again */
      }
    }

    parse(e) {
      try {
        return JSON.parse(e.data);
      } catch {
        return null;
      }
    }

    onCount(e) {
      const d = this.parse(e);
      if (!d) return;
      if (typeof d.count === "number") this.setCount(d.count);
      if (typeof d.seq === "number") this.countSeq = d.seq;
      // the list was read before notices up to d.seq were stored: fetch what we lack
      if (this.listed && this.countSeq > this.topSeq) this.resync();
      // the feed position the stream starts from: resume after it on reconnect
      if (typeof d.seq === "number" && (this.lastSeq === null || d.seq > num(this.lastSeq))) {
        this.lastSeq = String(d.seq);
      }
    }

    onReset(e) {
      // the server's feed is behind our position (its store was reset): start over
      const d = this.parse(e);
      this.lastSeq = d && typeof d.seq === "number" ? String(d.seq) : null;
      this.reloadList();
    }

    /** Forget the list and load its first page again (the stream stays open). */
    reloadList() {
      this.listGen++;
      this.listed = false;
      this.topSeq = 0;
      this.items.clear();
      this.nodes.clear();
      this.list.replaceChildren();
      this.next = null;
      this.loading = false;
      this.showState("loading");
      this.loadFirst();
    }

    onNotice(e, isNew) {
      const n = this.parse(e);
      if (!n || !n.id) return;
      const known = this.items.has(n.id);
      if (!isNew && !known) return; // a repeat of a notice we do not show (an older page)
      const was = known ? this.items.get(n.id).status : undefined;
      const seq = isNew && e.lastEventId ? num(e.lastEventId) : num(n.seq);
      if (isNew && seq) {
        if (this.lastSeq === null || seq > num(this.lastSeq)) this.lastSeq = String(seq);
        if (n.seq === undefined) n.seq = seq;
      }
      this.upsert(n, isNew && !known);
      // the `count` sent on (re)connect already counts every notice up to its seq: a
      // replayed one is not counted twice
      if (isNew && !n.read && seq > this.countSeq) {
        this.countSeq = seq;
        this.setCount(this.count + 1);
      }
      if (isNew && !known) {
        this.announce(`New ${SEVERITY[n.severity] ? n.severity + " " : ""}notice: ${n.title}`);
        this.dispatchEvent(new CustomEvent("vestnik-notice", { detail: { notice: n } }));
      }
      // an update never counts: resolving an incident leaves it as read or unread as it was
      if (was === "firing" && n.status === "resolved") this.announce(`Resolved: ${n.title}`);
      this.syncEmpty();
    }

    onRead(e) {
      const d = this.parse(e);
      if (!d) return;
      const read = d.read !== false;
      for (const id of d.ids || []) {
        const n = this.items.get(id);
        if (!n) continue;
        if (d.archived) {
          this.items.delete(id);
          this.nodes.get(id)?.remove();
          this.nodes.delete(id);
          this.syncEmpty();
        } else if (n.read !== read) {
          n.read = read;
          this.render(n);
        }
      }
      if (typeof d.count === "number") this.setCount(d.count);
    }

    // ---------------------------------------------------------------- model -> DOM
    upsert(n, fresh) {
      if (n.archived) return;
      const old = this.items.get(n.id);
      const merged = old ? { ...old, ...n } : n;
      this.items.set(n.id, merged);
      const seq = num(merged.seq);
      if (seq && (this.lastSeq === null || seq > num(this.lastSeq))) this.lastSeq = String(seq);
      if (seq > this.topSeq) this.topSeq = seq;
      let li = this.nodes.get(n.id);
      if (!li) {
        li = h("li", { "data-id": n.id });
        this.nodes.set(n.id, li);
        // newest first: before the first node with a lower seq (or older time)
        const key = this.sortKey(merged);
        let before = null;
        const last = this.list.lastElementChild;
        const lastItem = last && this.items.get(last.dataset.id);
        // older pages arrive oldest-last: append without scanning the list
        const scan = lastItem && this.compare(this.sortKey(lastItem), key) < 0;
        for (const other of scan ? this.list.children : []) {
          const o = this.items.get(other.dataset.id);
          if (o && this.compare(this.sortKey(o), key) < 0) {
            before = other;
            break;
          }
        }
        this.list.insertBefore(li, before);
        if (fresh) {
          li.classList.add("fresh");
          this.later(() => li.classList.remove("fresh"), 1700);
        }
      }
      this.render(merged);
    }

    sortKey(n) {
      return [num(n.seq), toMs(n.created_at)];
    }

    compare(a, b) {
      return a[0] && b[0] ? a[0] - b[0] : a[1] - b[1];
    }

    render(n) {
      const li = this.nodes.get(n.id);
      if (!li) return;
      const sev = SEVERITY[n.severity] ? n.severity : "info";
      const focused = this.root.activeElement && li.contains(this.root.activeElement);
      li.className = `sev-${sev}${n.read ? "" : " unread"}${li.classList.contains("fresh") ? " fresh" : ""}`;
      const ms = toMs(n.created_at);
      const when = h("time", { datetime: ms ? new Date(ms).toISOString() : null,
        title: ms ? new Date(ms).toLocaleString() : null, "data-ms": ms || null,
        text: ms ? fmt(ms) : "" });
      const [chips, state] = incident(n);
      const label = `${n.read ? "" : "Unread. "}${state}${SEVERITY[sev]}: ${n.title}`;
      const inner = [
        h("span", { class: "icon", "aria-hidden": "true", text: sev === "info" ? "i" : "!" }),
        h("span", { class: "main" },
          h("div", { class: "title", text: n.title }),
          n.body ? h("div", { class: "body", text: n.body }) : null,
          h("div", { class: "meta" }, chips,
            h("span", { class: "sev", text: SEVERITY[sev] }), h("span", { text: "·" }), when,
            n.alert ? h("span", { text: "·" }) : null,
            n.alert ? h("span", { text: n.alert }) : null,
            n.repeat > 0 ? h("span", { class: "repeat", title: "repeated", text: `×${n.repeat + 1}` })
              : null)),
        h("span", { class: "dot", "aria-hidden": "true" }),
      ];
      const safe = safeLink(n.link);
      const hit = safe
        ? h("a", { class: "hit", href: safe, "aria-label": label }, inner)
        : h("button", { class: "hit", type: "button", "aria-label": label }, inner);
      hit.addEventListener("click", (e) => this.activate(e, n.id));
      li.replaceChildren(hit);
      li.hidden = !this.shown(n);
      if (focused && li.hidden) this.focusNear(li);
      else if (focused) hit.focus({ preventScroll: true });
    }

    /** Whether the filters let `n` show (the unread one is the server's; "firing only"
     * is applied here, over the loaded items). */
    shown(n) {
      return !this.firingOnly || n.status === "firing";
    }

    shownCount() {
      let c = 0;
      for (const n of this.items.values()) if (this.shown(n)) c++;
      return c;
    }

    /** The empty state follows what is shown, once the list is in (never over an error). */
    syncEmpty() {
      const st = this.getAttribute("state");
      const c = this.shownCount();
      if (c > 0) this.showState(null);
      else if (c === 0 && this.listed && st === "ready") this.showState("empty");
    }

    /** Keep keyboard focus in the list when the focused item is filtered out. */
    focusNear(li) {
      const visible = (e) => e && !e.hidden;
      let e = li.nextElementSibling;
      while (e && !visible(e)) e = e.nextElementSibling;
      if (!e) {
        e = li.previousElementSibling;
        while (e && !visible(e)) e = e.previousElementSibling;
      }
      (e ? e.querySelector(".hit") : this.firingBtn).focus({ preventScroll: true });
    }

    /** One interval for the whole list (not a timer per item): relative times and the
     * durations of firing incidents. */
    refreshTimes() {
      for (const t of this.list.querySelectorAll("time[data-ms]")) {
        t.textContent = fmt(Number(t.dataset.ms));
      }
      const now = Date.now();
      for (const t of this.list.querySelectorAll("[data-since]")) {
        t.textContent = `for ${dur(now - Number(t.dataset.since), true)}`;
      }
    }

    setCount(c) {
      c = Math.max(0, c | 0);
      const changed = c !== this.count;
      this.count = c;
      this.badge.hidden = c === 0;
      this.badge.textContent = c > 99 ? "99+" : String(c);
      this.headBadge.hidden = c === 0;
      this.headBadge.textContent = this.badge.textContent;
      this.bell.setAttribute("aria-label", c ? `Notifications, ${c} unread` : "Notifications");
      this.pill.textContent = c ? `${c} unread` : "";
      this.markAll.disabled = c === 0;
      this.setAttribute("unread", String(c));
      if (changed) this.dispatchEvent(new CustomEvent("vestnik-count", { detail: { count: c } }));
    }

    setBanner(text, bad = false) {
      // while the list itself shows the error, a "reconnecting" banner would say it twice
      if (!bad && ["error", "signin"].includes(this.getAttribute("state"))) text = null;
      this.banner.hidden = !text;
      this.banner.classList.toggle("bad", bad);
      this.banner.replaceChildren();
      if (text) {
        if (!bad) this.banner.append(h("span", { class: "spin", "aria-hidden": "true" }));
        this.banner.append(h("span", { text }));
      }
      this.toggleAttribute("reconnecting", Boolean(text) && !bad);
    }

    showState(kind, detail) {
      const s = this.state;
      s.replaceChildren();
      s.hidden = !kind;
      // nothing to filter or mark while signed out or failing
      this.tools.hidden = kind === "signin" || kind === "error";
      this.setAttribute("state", kind || "ready");
      if (!kind) return;
      if (kind === "loading") {
        s.append(h("div", { class: "more" }, h("span", { class: "spin", "aria-hidden": "true" }),
          h("span", { text: "Loading notifications…" })));
      } else if (kind === "empty" && this.firingOnly) {
        s.append(h("strong", { text: this.filter === "unread" ? "No unread firing incidents"
          : "No firing incidents" }),
          h("span", { text: "Incidents that are still firing appear here." }));
      } else if (kind === "empty") {
        s.append(h("strong", { text: this.filter === "unread" ? "No unread notices" : "You're all caught up" }),
          h("span", { text: "New notices appear here as they happen." }));
      } else if (kind === "error") {
        s.append(h("strong", { text: "Could not load notifications" }),
          h("span", { text: detail || "" }), h("br"),
          this.es || this.timers.size
            ? h("small", { class: "note", text: "Retrying in the background…" }) : null,
          h("br"),
          h("button", { class: "btn", type: "button", text: "Try again",
            onclick: () => this.start() }));
      } else if (kind === "signin") {
        const input = h("input", { type: "password", placeholder: "Paste a user token",
          "aria-label": "User token", autocomplete: "off" });
        s.append(h("strong", { text: detail ? "Sign in again" : "Not signed in" }),
          h("span", { text: detail || "Open this page with ?token=… or paste a user token." }),
          h("form", { class: "tok", onsubmit: (e) => {
            e.preventDefault();
            if (!input.value.trim()) return;
            sessionStorage.setItem(TOKEN_KEY, input.value.trim());
            this.start();
          } }, input, h("button", { class: "btn", type: "submit", text: "Open" })));
      }
    }

    showError(e) {
      let text = e.message || String(e);
      if (e instanceof ApiError && e.status === 401) {
        text = "Your session has expired or the token is not valid.";
        this.stop(); // retrying cannot help
        this.setBanner(null);
        if (!this.getAttribute("token")) {
          // the tab's own token (from ?token= or pasted): ask for another one
          sessionStorage.removeItem(TOKEN_KEY);
          this.showState("signin", `${text} Paste a new token.`);
          return;
        }
      } else if (!(e instanceof ApiError)) {
        text = "The server cannot be reached.";
        // keep trying in the background: the stream's reconnect will resync us
      }
      if (this.items.size === 0) this.showState("error", text);
      else this.setBanner(text, true);
    }

    announce(text) {
      this.live.textContent = "";
      // a separate task so screen readers see a change even for equal text
      this.later(() => {
        this.live.textContent = text;
      }, 50);
    }

    // ---------------------------------------------------------------- actions
    setFilter(f) {
      if (f === this.filter) return;
      this.filter = f;
      this.allBtn.setAttribute("aria-pressed", String(f === "all"));
      this.unreadBtn.setAttribute("aria-pressed", String(f === "unread"));
      this.reloadList(); // the stream stays; the list reloads under the new filter
    }

    /** "Firing only": over the items already loaded (the feed API has no status filter),
     * so no reload; infinite scroll keeps reading older pages while the list is short. */
    setFiringOnly(on) {
      this.firingOnly = on;
      this.firingBtn.setAttribute("aria-pressed", String(on));
      this.toggleAttribute("firing-only", on);
      for (const [id, li] of this.nodes) li.hidden = !this.shown(this.items.get(id));
      const st = this.getAttribute("state");
      if (st === "ready" || st === "empty") this.showState(this.shownCount() ? null : "empty");
      this.maybeMore();
    }

    async activate(e, id) {
      const n = this.items.get(id);
      if (!n) return;
      const link = safeLink(n.link);
      const modified = e.metaKey || e.ctrlKey || e.shiftKey || e.button === 1;
      if (link && !modified) e.preventDefault();
      // keepalive: the request outlives the page when we navigate away right after
      const marking = n.read ? Promise.resolve() : this.markRead(n, Boolean(link && !modified));
      if (!link || modified) return;
      const open = new CustomEvent("vestnik-open", { detail: { notice: n }, cancelable: true });
      if (!this.dispatchEvent(open)) return;
      // give the read request a moment, then follow the link (keepalive finishes it anyway)
      await Promise.race([marking, new Promise((r) => setTimeout(r, 800))]);
      location.assign(link);
    }

    async markRead(n, keepalive = false) {
      n.read = true;
      this.render(n);
      this.setCount(this.count - 1);
      try {
        const res = await this.request(`/api/v1/me/notices/${encodeURIComponent(n.id)}/read`,
          { method: "POST", keepalive });
        if (res && typeof res.count === "number") this.setCount(res.count);
      } catch (e) {
        n.read = false;
        this.render(n);
        this.setCount(this.count + 1);
        this.setBanner(`Could not mark as read: ${e.message}`, true);
        this.later(() => this.setBanner(null), 4000);
      }
    }

    async readAll() {
      this.markAll.disabled = true;
      try {
        const res = await this.request("/api/v1/me/notices/read-all", { method: "POST" });
        for (const n of this.items.values()) {
          if (!n.read) {
            n.read = true;
            this.render(n);
          }
        }
        this.setCount(res && typeof res.count === "number" ? res.count : 0);
        this.announce("All notices marked as read");
      } catch (e) {
        this.markAll.disabled = false;
        this.setBanner(`Could not mark all as read: ${e.message}`, true);
        this.later(() => this.setBanner(null), 4000);
      }
    }

    onListKey(e) {
      const hits = [...this.list.querySelectorAll("li:not([hidden]) .hit")];
      const i = hits.indexOf(this.root.activeElement);
      let j = null;
      if (e.key === "ArrowDown" || e.key === "j") j = Math.min(hits.length - 1, i + 1);
      else if (e.key === "ArrowUp" || e.key === "k") j = Math.max(0, i - 1);
      else if (e.key === "Home") j = 0;
      else if (e.key === "End") j = hits.length - 1;
      if (j === null || !hits.length) return;
      e.preventDefault();
      hits[j].focus();
      hits[j].scrollIntoView({ block: "nearest" });
      if (j === hits.length - 1) this.maybeMore();
    }
  }

  const validMs = (ms) => Number.isFinite(ms) && ms > 0 && ms < 8.64e15;

  /** An incident's chips for the meta line and the words for the item's label: "firing"
   * with how long so far, "resolved" with when and how long it lasted, "silenced". */
  function incident(n) {
    const chips = [];
    let words = "";
    const start = toMs(n.created_at);
    if (n.status === "firing") {
      const since = validMs(start) ? start : 0;
      chips.push(h("span", { class: "inc inc-firing" },
        h("span", { class: "mark", "aria-hidden": "true", text: "●" }), " ",
        h("span", { text: "Firing" }), " ",
        since ? h("span", { "data-since": since, text: `for ${dur(Date.now() - since, true)}`,
          title: `Since ${new Date(since).toLocaleString()}` }) : null));
      words = "Firing. ";
    } else if (n.status === "resolved") {
      const end = toMs(n.resolved_at);
      const at = validMs(end) ? end : 0;
      const lasted = at && validMs(start) && at >= start ? dur(at - start) : null;
      chips.push(h("span", { class: "inc inc-resolved" },
        h("span", { class: "mark", "aria-hidden": "true", text: "✓" }), " ",
        h("span", { text: "Resolved" }), " ",
        at ? h("time", { datetime: new Date(at).toISOString(),
          title: `Resolved ${new Date(at).toLocaleString()}`, "data-ms": at, text: fmt(at) })
          : null,
        lasted ? [h("span", { "aria-hidden": "true", text: " · " }),
          h("span", { class: "lasted", text: `lasted ${lasted}` })] : null));
      words = lasted ? `Resolved, lasted ${lasted}. ` : "Resolved. ";
    }
    if (n.silenced === true) {
      chips.push(h("span", { class: "inc inc-silenced", text: "Silenced",
        title: "A silence matched it: not pushed live, not forwarded" }));
      words += "Silenced. ";
    }
    return [chips, words];
  }

  /** Only http(s) and same-site relative links are followed (never javascript: URLs). */
  function safeLink(link) {
    if (!link || typeof link !== "string") return null;
    try {
      const u = new URL(link, location.href);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch {
      return null;
    }
  }

  customElements.define("vestnik-inbox", VestnikInbox);
})();
