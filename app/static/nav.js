// Shows the demo-only links (live VMs, the mailbox) when `vestnik up --demo` runs: elsewhere
// /demo/* answers 404, so the pages ask /site.json instead of probing a demo route.
const links = document.querySelectorAll("nav a[data-demo]");
if (links.length) {
  fetch("/site.json")
    .then((r) => (r.ok ? r.json() : { demo: false }))
    .then((d) => {
      for (const link of links) link.hidden = !d.demo;
    })
    .catch(() => {});
}
