// Live updates: listen to /api/events (server-sent events) and re-fetch this page's #main
// fragment (?partial=1) at most once a second while events arrive. No library, nothing external.
// A fragment that did not change is left alone, the focused link or button keeps the focus, and
// the refresh waits while the user selects text in the page (to copy an id or a traceback).
(function () {
  "use strict";
  var dot = document.getElementById("live");
  var main = document.getElementById("main");
  if (!main || !window.EventSource) { return; }
  var pending = false, last = 0, MIN_GAP = 1000, shown = null;

  function selecting() {
    var sel = window.getSelection();
    return sel && !sel.isCollapsed && main.contains(sel.anchorNode);
  }

  function refocus(html) {
    var all = main.querySelectorAll("a[href], button, input, select, summary, textarea");
    for (var i = 0; i < all.length; i++) {
      if (all[i].outerHTML === html) { all[i].focus(); return; }
    }
  }

  function refresh() {
    pending = false;
    last = Date.now();
    if (selecting()) { schedule(); return; }
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null || html === shown) { return; }
        if (selecting()) { schedule(); return; }
        var active = document.activeElement;
        var focused = active && active !== main && main.contains(active) ? active.outerHTML : null;
        var open = Array.prototype.map.call(main.querySelectorAll("details[open]"), function (d) {
          return Array.prototype.indexOf.call(main.querySelectorAll("details"), d);
        });
        main.innerHTML = html;
        shown = html;
        var all = main.querySelectorAll("details");
        open.forEach(function (i) { if (all[i]) { all[i].open = true; } });
        if (focused) { refocus(focused); }
        document.body.dataset.refreshed = String(Date.now());
      })
      .catch(function () {});
  }

  function schedule() {
    if (pending) { return; }
    pending = true;
    setTimeout(refresh, Math.max(0, MIN_GAP - (Date.now() - last)));
  }

  var source = new EventSource("/api/events");
  source.onopen = function () { dot.className = "live on"; };
  source.onerror = function () { dot.className = "live off"; };
  source.addEventListener("event", schedule);
})();
