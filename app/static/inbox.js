// The inbox page: the tab title follows the unread count.
const inbox = document.querySelector("vestnik-inbox");
inbox.addEventListener("vestnik-count", (e) => {
  document.title = (e.detail.count ? `(${e.detail.count}) ` : "") + "Inbox · Vestnik";
});
