// Keeps the live part of a console page current: every few seconds it fetches the same
// fragment the server rendered (JSON {"html": ...}) and swaps it in, unless the keyboard
// focus is inside it (so a link being tabbed to does not vanish). Without JavaScript the
// pages work as they are; a reload shows the same data.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  var region = document.getElementById("live");
  if (!region || !region.dataset.live) {
    return;
  }
  var source = region.dataset.live;
  var busy = false;

  function refresh() {
    if (busy || document.hidden || region.contains(document.activeElement)) {
      return;
    }
    busy = true;
    fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        if (answer.status === 401) {
          window.location.assign("/ui/login");
          return null;
        }
        return answer.ok ? answer.json() : null;
      })
      .then(function (data) {
        if (data && typeof data.html === "string" && data.html !== region.innerHTML) {
          region.innerHTML = data.html;
          region.dataset.refreshed = String(Date.now());
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
      });
  }

  window.setInterval(refresh, PERIOD_MS);
})();
