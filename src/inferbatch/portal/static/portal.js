// The portal's few behaviours; everything live is htmx. Loaded as a file: the pages' CSP
// allows no inline script.
(function () {
  "use strict";

  // Forms with data-confirm="question" ask before they are sent (cancel, for instance).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm) {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
        event.stopPropagation();
      }
    }
  }, true);

  function copyText(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text, done); });
    } else {
      fallbackCopy(text, done);
    }
  }

  function fallbackCopy(text, done) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
    document.body.removeChild(area);
  }

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (!target) { return; }
    // data-copy="#id": copy that element's text.
    var button = target.closest("[data-copy]");
    if (button) {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (source) {
        copyText(source.textContent || "", function () {
          var label = button.textContent;
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 1500);
        });
      }
      return;
    }
    // data-add-row="#rows": one more empty row like the last one.
    var add = target.closest("[data-add-row]");
    if (add) {
      var rows = document.querySelector(add.getAttribute("data-add-row"));
      var last = rows && rows.lastElementChild;
      if (last) {
        var row = last.cloneNode(true);
        row.querySelectorAll("input").forEach(function (input) { input.value = ""; });
        rows.appendChild(row);
        row.querySelector("input").focus();
      }
    }
  });

  function syncPriority() {
    var custom = document.getElementById("priority-value");
    var chosen = document.querySelector("input[name=priority]:checked");
    if (custom) {
      var on = chosen && chosen.value === "custom";
      custom.disabled = !on;
      custom.hidden = !on;
    }
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) { return; }
    // The chosen file or endpoint changed: check the file again.
    if (target.matches("#input-file, #endpoint") && window.htmx) {
      window.htmx.trigger(document.body, "recheck");
    }
    if (target.matches("input[name=priority]")) { syncPriority(); }
  });

  syncPriority();
})();
