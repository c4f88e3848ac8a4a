// Flotilla UI live updates: embedded in the hub binary, served from
// /static/ui.js (no inline script: the Content-Security-Policy forbids it).
// The server sends a `changed` event when the page's content differs from
// what this page shows; the page is then fetched again and its <main>
// swapped, so no reload and no loss of scroll position.
"use strict";
(function () {
  var main = document.getElementById("main");
  if (!main || main.dataset.live !== "1" || !window.EventSource) {
    return;
  }
  var busy = false;
  var again = false;
  // Someone typing in a field of the page (a label edit): swap once the
  // field loses focus, not under their hands.
  function editing() {
    var el = document.activeElement;
    return !!el && main.contains(el) && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName) &&
      el.type !== "submit" && el.type !== "checkbox";
  }
  main.addEventListener("focusout", function () {
    if (again && !busy) {
      again = false;
      setTimeout(swap, 0);
    }
  });
  function swap() {
    if (busy || editing()) {
      again = true;
      return;
    }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) {
          throw new Error("status " + r.status);
        }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          main.innerHTML = fresh.innerHTML;
          main.dataset.fingerprint = fresh.dataset.fingerprint || "";
          document.body.dataset.updates = String(Number(document.body.dataset.updates || "0") + 1);
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          swap();
        }
      });
  }
  var src = "/events?path=" + encodeURIComponent(location.pathname) +
    "&query=" + encodeURIComponent(location.search.replace(/^\?/, "")) +
    "&fp=" + encodeURIComponent(main.dataset.fingerprint || "");
  var events = new EventSource(src);
  events.addEventListener("ready", function () {
    document.body.dataset.live = "connected";
  });
  events.addEventListener("changed", function (e) {
    document.body.dataset.live = "connected";
    if (e.data !== main.dataset.fingerprint) {
      swap();
    }
  });
})();
