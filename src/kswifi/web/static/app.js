// KSWiFi Connect page script: live usage and device notices over server-sent events, and the
// offline shell.
// Everything works without it; it only makes pages update by themselves.
(function () {
  "use strict";

  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").catch(function () {});
  }

  // Notifications on this device (My account): subscribe this browser to Web Push with the
  // server's key and hand the subscription over; or take it back.
  var pushBox = document.querySelector("[data-push-key]");
  if (pushBox && "serviceWorker" in navigator && "PushManager" in window && "Notification" in window) {
    var pushToken = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
    var pushStatus = pushBox.querySelector(".push-status");
    var turnOn = pushBox.querySelector('[data-push="on"]');
    var turnOff = pushBox.querySelector('[data-push="off"]');
    var keyBytes = function (text) {
      var padded = (text + "===".slice((text.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
      var raw = atob(padded);
      var bytes = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
      return bytes;
    };
    var send = function (path, body) {
      return fetch(path, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": pushToken },
        body: JSON.stringify(body)
      }).then(function (response) { if (!response.ok) throw new Error(String(response.status)); });
    };
    var show = function (subscribed, message) {
      turnOn.hidden = subscribed;
      turnOff.hidden = !subscribed;
      pushStatus.textContent = message;
    };
    pushBox.hidden = false;
    navigator.serviceWorker.ready.then(function (registration) {
      return registration.pushManager.getSubscription().then(function (existing) {
        show(!!existing, existing ? "Notifications are on for this device." : "");
        turnOn.addEventListener("click", function () {
          Notification.requestPermission().then(function (permission) {
            if (permission !== "granted") throw new Error("permission");
            return registration.pushManager.subscribe({
              userVisibleOnly: true, applicationServerKey: keyBytes(pushBox.getAttribute("data-push-key"))
            });
          }).then(function (subscription) {
            return send("/account/push", subscription.toJSON());
          }).then(function () {
            show(true, "Notifications are on for this device.");
          }).catch(function (error) {
            show(false, error && error.message === "permission"
              ? "Notifications are blocked for this site in your browser's settings."
              : "This browser could not turn notifications on. Alerts still come by e-mail.");
          });
        });
        turnOff.addEventListener("click", function () {
          registration.pushManager.getSubscription().then(function (subscription) {
            if (!subscription) return null;
            return send("/account/push/remove", { endpoint: subscription.endpoint }).then(function () {
              return subscription.unsubscribe();
            });
          }).then(function () { show(false, "Notifications are off for this device."); });
        });
      });
    });
  }

  // Receipts: a Print button (pages print fine without it, from the browser's menu).
  Array.prototype.forEach.call(document.querySelectorAll("[data-print]"), function (button) {
    button.addEventListener("click", function () { window.print(); });
  });

  // Tables become labelled cards at phone width (app.css): each cell names its column.
  Array.prototype.forEach.call(document.querySelectorAll(".table-wrap table"), function (table) {
    var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    Array.prototype.forEach.call(table.querySelectorAll("tbody tr"), function (row) {
      Array.prototype.forEach.call(row.children, function (cell, index) {
        if (heads[index] && !cell.hasAttribute("data-label")) cell.setAttribute("data-label", heads[index]);
      });
    });
  });

  // Moments are written in UTC by the server; shown in the person's own time zone.
  Array.prototype.forEach.call(document.querySelectorAll("time[data-local]"), function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when.getTime())) return;
    el.textContent = when.toLocaleString(undefined, {
      day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
      timeZoneName: "short"
    });
    el.title = el.getAttribute("datetime");
  });

  // Device notices: a page showing devices (My devices, a device's code) hears when one of
  // them gets new keys, is removed or renamed on another page or phone.
  (function () {
    var holder = document.querySelector("[data-device-notices]");
    var shown = document.querySelectorAll("[data-device-key]");
    if (!holder || !shown.length || !window.EventSource) return;
    var words = JSON.parse(holder.getAttribute("data-device-notices"));

    function element(id) {
      return Array.prototype.find.call(shown, function (el) { return el.getAttribute("data-connect-id") === id; });
    }
    function nameOf(el) {
      var named = el.querySelector('[data-field="device-name"]');
      return named ? named.textContent.trim() : (el.getAttribute("data-device-name") || "");
    }
    function tell(el, change, name) {
      if (!words[change] || el.getAttribute("data-device-change") === change) return;
      el.setAttribute("data-device-change", change);
      var note = el.querySelector('[data-field="device-notice"]');
      if (!note) {
        note = document.createElement("p");
        note.className = "alert warn";
        note.setAttribute("role", "alert");
        note.setAttribute("data-field", "device-notice");
        el.insertBefore(note, el.firstChild);
      }
      note.textContent = words[change].replace("{name}", name || nameOf(el));
      if (change === "removed") {
        Array.prototype.forEach.call(el.querySelectorAll("button, input"), function (b) { b.disabled = true; });
      }
    }

    var source = new EventSource("/api/connect/profiles/events");
    source.addEventListener("devices", function (e) {
      // What is true now, after a first connect or a reconnect that may have missed notices.
      var now = JSON.parse(e.data).devices;
      Array.prototype.forEach.call(shown, function (el) {
        var key = now[el.getAttribute("data-connect-id")];
        if (key === undefined) tell(el, "removed");
        else if (key !== el.getAttribute("data-device-key")) tell(el, "rotated");
      });
    });
    source.addEventListener("device", function (e) {
      var data = JSON.parse(e.data), el = element(data.connect_id);
      if (!el) return;
      if (data.change === "renamed") {
        var named = el.querySelector('[data-field="device-name"]');
        if (named) named.textContent = data.device_name;
        el.setAttribute("data-device-name", data.device_name);
      } else if (data.change === "removed") {
        tell(el, "removed", data.device_name);
      } else if (data.key !== el.getAttribute("data-device-key")) {
        tell(el, "rotated", data.device_name);
      }
    });
  })();

  var box = document.getElementById("usage");
  if (!box) return;

  var GIB = 1024 * 1024 * 1024;
  var MIB = 1024 * 1024;
  var FINAL = ["exhausted", "expired", "revoked"];
  var labels = JSON.parse(box.getAttribute("data-labels") || "{}");
  var endedText = JSON.parse(box.getAttribute("data-ended") || "{}");
  var limit = Number(box.dataset.limitBytes) || 0;
  var expiresAt = box.dataset.expiresAt ? Date.parse(box.dataset.expiresAt) : null;
  var status = box.dataset.status;
  var lastSample = null;
  var lastEventAt = 0;

  function field(name) { return box.querySelector('[data-field="' + name + '"]'); }
  function setText(name, text) { var el = field(name); if (el && el.textContent !== text) el.textContent = text; }

  function trim(value) { return value.toFixed(1).replace(/\.0$/, ""); }
  function formatGb(bytes) {
    if (bytes >= GIB || bytes === 0) return trim(bytes / GIB) + " GB";
    var mb = bytes / MIB;
    return (mb < 10 ? trim(mb) : Math.round(mb).toString()) + " MB";
  }
  function timeLeft(seconds) {
    if (seconds === null) return "Starts when your phone first connects";
    if (seconds <= 0) return "No time left";
    var days = Math.floor(seconds / 86400), hours = Math.floor((seconds % 86400) / 3600);
    var minutes = Math.floor((seconds % 3600) / 60);
    if (days) return days + " day" + (days !== 1 ? "s" : "") + " " + hours + " h";
    if (hours) return hours + " h " + minutes + " min";
    if (minutes) return minutes + " min";
    return "under a minute";
  }

  function showStatus(next) {
    status = next;
    var pill = field("status");
    if (pill) { pill.textContent = labels[next] || next; pill.className = "pill " + next; }
    box.dataset.status = next;
  }

  function showUsage(data) {
    var used = Math.min(Number(data.used_bytes) || 0, limit || Infinity);
    var percent = Number(data.usage_percent) || 0;
    setText("usage_text", data.usage_text);
    setText("remaining", formatGb(Number(data.remaining_bytes) || 0));
    var meter = field("meter");
    if (meter) {
      meter.firstElementChild.style.width = percent + "%";
      meter.setAttribute("aria-valuenow", String(Math.round(percent)));
      meter.classList.toggle("high", percent >= 80 && percent < 100);
      meter.classList.toggle("full", percent >= 100);
    }
    if (data.expires_at) { expiresAt = Date.parse(data.expires_at); }
    var at = data.at ? Date.parse(data.at) : Date.now();
    if (lastSample && at > lastSample.at && used >= lastSample.used) {
      var mbps = ((used - lastSample.used) * 8) / ((at - lastSample.at) / 1000) / 1e6;
      setText("speed", (mbps >= 10 ? Math.round(mbps) : mbps.toFixed(1)) + " Mbps");
    }
    lastSample = { at: at, used: used };
    lastEventAt = Date.now();
    if (data.status && FINAL.indexOf(data.status) < 0) showStatus(data.status);
    chartAdd(at, used);
  }

  function showEnded(kind) {
    showStatus(kind);
    setText("speed", "—");
    var ended = field("ended");
    if (ended) { ended.textContent = endedText[kind] || ""; ended.hidden = false; }
    var setup = field("setup-link");
    if (setup) setup.hidden = true;
  }

  // The chart: same geometry as kswifi.web.chart (viewBox 600x220).
  var svg = document.querySelector(".chart svg[data-points]");
  var chart = svg ? JSON.parse(svg.getAttribute("data-points")) : null;
  function chartAdd(at, used) {
    if (!chart) return;
    var pts = chart.points;
    if (pts.length && pts[pts.length - 1][1] === used) return;
    pts.push([at, used]);
    var L = 66, R = 588, T = 14, B = 186;
    var start = chart.start, end = Math.max(Date.now(), at);
    var span = Math.max(60000, end - start);
    function x(t) { return L + (R - L) * ((t - start) / span); }
    function y(u) { return B - (B - T) * (chart.limit > 0 ? Math.min(1, u / chart.limit) : 0); }
    var coords = [L + "," + B];
    pts.forEach(function (p) { coords.push(x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)); });
    coords.push(x(end).toFixed(1) + "," + y(used).toFixed(1));
    var line = coords.join(" ");
    svg.querySelector("polyline").setAttribute("points", line);
    svg.querySelector("polygon").setAttribute("points", line + " " + x(end).toFixed(1) + "," + B + " " + L + "," + B);
    var empty = svg.querySelector("text.empty");
    if (empty) empty.remove();
  }

  setInterval(function () {
    if (expiresAt !== null && FINAL.indexOf(status) < 0) {
      setText("time_left", timeLeft(Math.max(0, Math.floor((expiresAt - Date.now()) / 1000))));
    }
    if (status === "connected" && lastEventAt && Date.now() - lastEventAt > 4000) setText("speed", "0 Mbps");
  }, 1000);

  if (!box.dataset.live || !window.EventSource) return;

  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var url = "/api/sessions/" + encodeURIComponent(box.dataset.sessionId) + "/usage/stream";
  var source = null;
  var failures = 0;

  function open() {
    source = new EventSource(url);
    source.addEventListener("open", function () { failures = 0; box.dataset.stream = "open"; });
    source.addEventListener("usage", function (e) { showUsage(JSON.parse(e.data)); });
    source.addEventListener("warning", function (e) {
      var data = JSON.parse(e.data), el = field("warning");
      if (el) { el.textContent = data.message; el.hidden = false; }
    });
    FINAL.forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        var data = JSON.parse(e.data);
        if (data.usage_text) showUsage(data);
        showEnded(kind);
        source.close();
        box.dataset.stream = "closed";
      });
    });
    // `reconnect`: the server closes the stream and EventSource resumes with Last-Event-ID.
    source.addEventListener("error", function () {
      if (source.readyState !== EventSource.CLOSED) return;
      // Closed for good (usually an expired login cookie): refresh it, then open again.
      failures += 1;
      var wait = Math.min(30000, 1000 * failures);
      fetch("/auth/refresh", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } })
        .then(function (response) {
          if (response.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(location.pathname)); return; }
          setTimeout(open, wait);
        })
        .catch(function () { setTimeout(open, wait); });
    });
  }
  open();
})();
