// Live progress of a rollout (UI, issue 16): reads the rollout's status JSON
// every few seconds and updates the progress bar, the group and device
// tables, the actions the state allows and the timeline picture. A static
// file, so the Content-Security-Policy (script-src 'self') allows it; it
// writes only textContent, never HTML, so nothing in the status (device
// states, reasons: the devices' words) can become markup.
"use strict";
(function () {
  var section = document.getElementById("progress");
  if (!section) return;
  var url = section.getAttribute("data-status-url");
  var timelineUrl = section.getAttribute("data-timeline-url");
  var PERIOD_MS = 3000;
  var FINAL = ["done", "stopped", "cancelled"];  // ictl.service.rollout.FINAL_ROLLOUT

  function cell(tr, text) {
    var td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    tr.appendChild(td);
  }

  function show(s) {
    var bar = document.getElementById("progress-bar");
    bar.max = s.total || 1;
    bar.value = s.done || 0;
    document.getElementById("progress-text").textContent =
      (s.done || 0) + " of " + (s.total || 0) + " done, " + (s.failed || 0) + " failed";
    document.getElementById("rollout-state").textContent = s.state;
    document.getElementById("stop-reason").textContent = s.stop_reason || "";
    var body = document.querySelector("#groups tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    (s.groups || []).forEach(function (g) {
      var tr = document.createElement("tr");
      [g.index, g.size, g.ok, g.failed, g.pending, g.state].forEach(function (v) { cell(tr, v); });
      body.appendChild(tr);
    });
    var devs = document.querySelector("#rollout-devices tbody");
    while (devs.firstChild) devs.removeChild(devs.firstChild);
    (s.devices || []).forEach(function (d) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      var a = document.createElement("a");
      a.href = "/devices/" + encodeURIComponent(d.device_id);
      a.textContent = d.device_id;
      td.appendChild(a);
      tr.appendChild(td);
      [d.group, d.state + (d.pct === null || d.pct === undefined ? "" : " (" + d.pct + " %)"), d.reason, d.updated]
        .forEach(function (v) { cell(tr, v); });
      devs.appendChild(tr);
    });
    // The actions this state allows (the server refuses the others anyway).
    Array.prototype.forEach.call(document.querySelectorAll("form[data-states]"), function (f) {
      f.hidden = f.getAttribute("data-states").split(" ").indexOf(s.state) < 0;
    });
    var img = document.getElementById("timeline");
    if (img && timelineUrl) img.src = timelineUrl + "?t=" + Date.now();
    return FINAL.indexOf(s.state) < 0;
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("status " + r.status); return r.json(); })
      .then(function (s) {
        var live = show(s);
        document.getElementById("progress-live").textContent =
          live ? "(live: updated " + new Date().toLocaleTimeString() + ")" : "(finished)";
        if (live) setTimeout(tick, PERIOD_MS);
      })
      .catch(function () {
        document.getElementById("progress-live").textContent = "(live updates stopped: reload the page)";
      });
  }
  setTimeout(tick, PERIOD_MS);
})();
