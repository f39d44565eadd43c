// Runs first and synchronously: moves `?token=` from the address bar into this tab's
// sessionStorage (under data-key, default `vestnik_token`) and removes it from the URL, so
// the token is neither bookmarked nor shown, and the widget finds it when it starts.
(() => {
  const key = (document.currentScript && document.currentScript.dataset.key) || "vestnik_token";
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (!token) return;
  sessionStorage.setItem(key, token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
})();
