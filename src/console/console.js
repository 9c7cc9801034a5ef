// tidegate console: live refresh of the overview and keyboard shortcuts.
// Our own code, no dependencies. Refreshes only while the tab is visible,
// so a console left open in the background costs tidegate nothing.
(function () {
  "use strict";
  var body = document.querySelector("tbody[data-refresh]");
  if (body) {
    var url = body.getAttribute("data-refresh");
    var busy = false;
    var tick = function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { if (r.ok) return r.text(); throw new Error(String(r.status)); })
        .then(function (html) {
          // The server escaped every value: the fragment is trusted markup.
          var t = document.createElement("tbody");
          t.innerHTML = html;
          body.replaceChildren.apply(body, Array.prototype.slice.call(t.children));
        })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { busy = false; });
    };
    setInterval(tick, 2000);
    document.addEventListener("visibilitychange", tick);
  }

  // Narrow screens: label each overview cell with its column.
  var heads = Array.prototype.map.call(document.querySelectorAll("table.destinations thead th"), function (th) { return th.textContent; });
  var label = function () {
    document.querySelectorAll("table.destinations tbody tr").forEach(function (tr) {
      Array.prototype.forEach.call(tr.children, function (cell, i) { cell.setAttribute("data-label", heads[i] || ""); });
    });
  };
  label();
  if (body) new MutationObserver(label).observe(body, { childList: true });

  // A review item's decision forms share the reviewer typed once in it.
  document.addEventListener("submit", function (e) {
    var item = e.target.closest ? e.target.closest("article.item") : null;
    if (!item) return;
    var typed = item.querySelector("input[name=reviewer]:not([type=hidden])");
    if (!typed) return;
    e.target.querySelectorAll("input[type=hidden][name=reviewer]").forEach(function (i) { i.value = typed.value; });
  }, true);

  // Keys: "g" then o/m/v/q goes to a page; j/k moves between review items;
  // on a review item, a approves, e edits, r rejects.
  var pending = false;
  var typing = function (e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  };
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    if (pending) {
      pending = false;
      var link = document.querySelector('header nav a[data-key="' + e.key + '"]');
      if (link) { e.preventDefault(); link.click(); }
      return;
    }
    if (e.key === "g") { pending = true; return; }
    var items = Array.prototype.slice.call(document.querySelectorAll("article.item"));
    if (!items.length) return;
    var current = document.activeElement && document.activeElement.closest ? document.activeElement.closest("article.item") : null;
    var i = items.indexOf(current);
    if (e.key === "j" || e.key === "k") {
      e.preventDefault();
      var next = e.key === "j" ? Math.min(i + 1, items.length - 1) : Math.max(i - 1, 0);
      items[i < 0 ? 0 : next].focus();
      return;
    }
    if (!current) return;
    if (e.key === "a") {
      var approve = current.querySelector('[data-action="a"]');
      if (approve) { e.preventDefault(); approve.click(); }
    } else if (e.key === "e" || e.key === "r") {
      var field = current.querySelector('[data-action="' + e.key + '"]');
      if (field) { e.preventDefault(); field.focus(); }
    }
  });
})();
