// Live updates: listen to /api/events (server-sent events) and re-fetch this page's #main
// fragment (?partial=1) at most once a second while events arrive. No library, nothing external.
(function () {
  "use strict";
  var dot = document.getElementById("live");
  var main = document.getElementById("main");
  if (!main || !window.EventSource) { return; }
  var pending = false, last = 0, MIN_GAP = 1000;

  function refresh() {
    pending = false;
    last = Date.now();
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var open = Array.prototype.map.call(main.querySelectorAll("details[open]"), function (d) {
          return Array.prototype.indexOf.call(main.querySelectorAll("details"), d);
        });
        main.innerHTML = html;
        var all = main.querySelectorAll("details");
        open.forEach(function (i) { if (all[i]) { all[i].open = true; } });
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
