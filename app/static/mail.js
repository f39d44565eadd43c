// /demo/mail: what the demo SMTP sink received, newest first (polled: a demo page).
import { ago, api, h } from "/static/lib.js";

const box = document.getElementById("mails");
const seen = new Set();
let failures = 0;

function mail(m) {
  const body = m.html
    ? h("iframe", { sandbox: "", title: `Mail: ${m.subject}`, srcdoc: m.html, loading: "lazy" })
    : h("pre", { text: m.text || "" });
  return h("details", { class: "mail", "data-id": m.id },
    h("summary", {},
      h("span", { class: "who", title: m.to.join(", "), text: `To ${m.to.join(", ")}` }),
      h("span", { class: "subj", text: m.subject || "(no subject)" }),
      h("span", { class: "when", "data-ms": m.at, title: new Date(m.at).toLocaleString(),
        text: ago(m.at) })),
    h("div", { class: "content" },
      h("p", { class: "muted", style: "margin:0 0 8px;font-size:12px",
        text: `From ${m.from} · ${new Date(m.at).toLocaleString()}` }),
      body));
}

async function poll() {
  try {
    const { data } = await api("/demo/mail.json");
    failures = 0;
    if (!data.on) throw Object.assign(new Error("not running"), { status: 404 });
    document.getElementById("error").hidden = true;
    document.getElementById("live").className = "live on";
    document.getElementById("live").textContent = "live";
    const fresh = data.items.filter((m) => !seen.has(m.id));
    for (const m of fresh.reverse()) {
      seen.add(m.id);
      box.prepend(mail(m));
    }
    document.getElementById("empty").hidden = seen.size > 0;
    document.getElementById("mail-count").textContent = seen.size ? `(${seen.size})` : "";
    for (const t of box.querySelectorAll(".when[data-ms]")) t.textContent = ago(Number(t.dataset.ms));
  } catch (e) {
    failures++;
    const err = document.getElementById("error");
    err.hidden = false;
    err.textContent = e.status === 404 ? "The demo SMTP sink is not running: start `vestnik up --demo`."
      : `Cannot reach the server (${e.message}); retrying…`;
    document.getElementById("live").className = "live down";
    document.getElementById("live").textContent = "offline";
  }
  setTimeout(poll, Math.min(15000, 2000 * 2 ** Math.min(failures, 3)));
}

poll();
