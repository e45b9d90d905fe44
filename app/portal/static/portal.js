/* ClinAIOps portal enhancements. Everything here is optional: every page works without it.
 *
 * 1. Charts: each element with data-chart="<id>" is drawn by plotly.js from the JSON data
 *    block <script type="application/json" id="<id>"> (no inline script: the CSP forbids it).
 * 2. Idle guard: after the session's idle limit without activity in any portal tab, the page
 *    is covered (nothing on screen for a passer-by) and the user is asked to sign in again.
 *    A form with unsent entries is kept: it is posted with _resume=1, which the server never
 *    acts on; it only keeps the entries (not passwords or confirmations) for the next
 *    sign-in and returns to this page with them filled in.
 */
(function () {
  "use strict";

  function drawCharts() {
    if (typeof window.Plotly === "undefined") return;
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var source = document.getElementById(el.getAttribute("data-chart"));
      if (!source) return;
      var spec = JSON.parse(source.textContent);
      el.classList.add("chart-live");
      window.Plotly.newPlot(el, spec.data, spec.layout, spec.config);
    });
  }

  var KEY = "clinaiops.lastActivity";
  var body = document.body;
  var idleMinutes = parseInt(body.getAttribute("data-idle-minutes") || "0", 10);
  var dirty = null;

  function now() { return Date.now(); }
  function touch() {
    try { window.localStorage.setItem(KEY, String(now())); } catch (e) { /* private mode */ }
    lastLocal = now();
  }
  var lastLocal = now();
  function lastActivity() {
    var shared = 0;
    try { shared = parseInt(window.localStorage.getItem(KEY) || "0", 10); } catch (e) { shared = 0; }
    return Math.max(shared, lastLocal);
  }

  function resume() {
    if (dirty) {
      dirty.querySelectorAll("input[type=password]").forEach(function (i) { i.value = ""; });
      var flag = document.createElement("input");
      flag.type = "hidden";
      flag.name = "_resume";
      flag.value = "1";
      dirty.appendChild(flag);
      dirty.submit();
    } else {
      window.location.reload();
    }
  }

  function cover() {
    if (document.getElementById("idle-cover")) return;
    var shade = document.createElement("div");
    shade.id = "idle-cover";
    shade.setAttribute("role", "alertdialog");
    shade.setAttribute("aria-modal", "true");
    var box = document.createElement("div");
    box.className = "card narrow";
    var h = document.createElement("h2");
    h.textContent = "Session ended";
    var p = document.createElement("p");
    p.textContent = "You were signed out after " + idleMinutes + " minutes without activity." +
      (dirty ? " What you typed is kept for you after you sign in (except passwords and confirmations)." : "");
    var b = document.createElement("button");
    b.className = "primary";
    b.type = "button";
    b.textContent = "Sign in again";
    b.addEventListener("click", resume);
    box.appendChild(h); box.appendChild(p); box.appendChild(b);
    shade.appendChild(box);
    document.body.appendChild(shade);
    document.querySelector("main").setAttribute("aria-hidden", "true");
    b.focus();
  }

  function startIdleGuard() {
    if (!idleMinutes || !body.hasAttribute("data-signed-in")) return;
    touch();
    ["keydown", "pointerdown", "wheel", "touchstart"].forEach(function (name) {
      window.addEventListener(name, touch, { passive: true });
    });
    document.querySelectorAll("form[method=post]").forEach(function (form) {
      form.addEventListener("input", function () { dirty = form; });
      form.addEventListener("submit", function () { touch(); });
    });
    // The server measures idleness from the last request, so by then it has ended the session.
    var limit = idleMinutes * 60 * 1000 + 5000;
    window.setInterval(function () {
      if (now() - lastActivity() > limit) cover();
    }, 5000);
  }

  function ready() {
    drawCharts();
    startIdleGuard();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
