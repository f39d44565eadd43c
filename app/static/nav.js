// Shows the demo-only links (the mailbox) when `vestnik up --demo` runs.
const link = document.querySelector("nav a[data-demo]");
if (link) {
  fetch("/demo/mail.json?limit=1")
    .then((r) => (r.ok ? r.json() : { on: false }))
    .then((d) => {
      link.hidden = !d.on;
    })
    .catch(() => {});
}
