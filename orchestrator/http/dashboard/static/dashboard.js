// The dashboard's only script (no inline scripts: the Content-Security-Policy forbids them).
// - times: shown in the browser's local time; the UTC value stays in the title (on hover);
// - htmx requests carry the CSRF token from the page's meta tag;
// - live updates: the API's event websocket says what changed, and the part of the page showing it is refetched.
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) {
        el.textContent = when.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
        el.title = when.toISOString().replace(".000Z", "Z") + " (UTC)";
      }
    });
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // A form that navigates (not one htmx sends) is on its way: a live reload now would cancel its request, and the
  // click that sent it (e.g. "Unpause the engine" just after the pause's own event) would be lost.
  var navigating = false;
  document.addEventListener("submit", function (event) { if (!event.defaultPrevented) navigating = true; });
  window.addEventListener("pageshow", function () { navigating = false; });

  var pending = {};
  function soon(key, action) {
    if (pending[key] || navigating) return;
    pending[key] = setTimeout(function () { pending[key] = null; if (!navigating) action(); }, 250);
  }

  function refresh(selector) {
    var el = document.querySelector(selector);
    if (el && window.htmx) window.htmx.trigger(el, "refresh");
  }

  function onMessage(message) {
    if (!message || message.name !== "invalidateCache") return;
    var value = message.value || {};
    var live = document.body.dataset.live;
    if (live === "list" && value.type === "processes" && value.id === "LIST") {
      if (location.search.indexOf("after=") === -1) soon("list", function () { refresh("#process-rows"); });
    } else if (live === "process" && value.type === "processes" && value.id === document.body.dataset.pid) {
      soon("process", function () { refresh("#process-live"); });
    } else if (live === "engine" && (value.type === "engineStatus" || value.type === "processStatusCounts")) {
      soon("engine", function () { location.reload(); });
    }
  }

  function catchUp() {
    var live = document.body.dataset.live;
    if (live === "list" && location.search.indexOf("after=") === -1) refresh("#process-rows");
    if (live === "process") refresh("#process-live");
  }

  var indicator;
  var delay = 500;
  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/api/ws/events");
    socket.onopen = function () {
      delay = 500;
      indicator.dataset.state = "on";
      catchUp(); // changes between the page's rendering and this connection were not streamed to us
    };
    socket.onmessage = function (event) {
      if (event.data === "__pong__") return;
      try { onMessage(JSON.parse(event.data)); } catch (e) { /* not for us */ }
    };
    socket.onclose = function () {
      indicator.dataset.state = "off";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    document.body.addEventListener("htmx:configRequest", function (event) {
      event.detail.headers["X-CSRF-Token"] = csrfToken();
    });
    document.body.addEventListener("htmx:afterSettle", function (event) {
      localTimes(event.detail.elt);
      var fresh = event.detail.elt.querySelector("[data-status]");
      if (event.detail.elt.id === "process-live" && fresh && fresh.dataset.status !== document.body.dataset.status) {
        location.reload(); // the actions and the form depend on the status
      }
    });
    indicator = document.getElementById("live-indicator");
    if (document.body.dataset.live && indicator) connect();
  });
})();
