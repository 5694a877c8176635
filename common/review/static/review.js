// synthpipe review: keyboard shortcuts and in-place decisions through the JSON API.
// Without this script the page still works through its forms.
(function () {
  "use strict";
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var queue = document.getElementById("queue");
  var help = document.getElementById("help");
  var toast = document.getElementById("toast");
  var toastTimer = null;
  if (!queue) { return; }
  var tags = (queue.getAttribute("data-tags") || "").split(",").filter(Boolean);

  function items() { return Array.prototype.slice.call(queue.querySelectorAll(".item[data-edit-id]")); }
  function current() { return queue.querySelector(".item.current"); }
  function label(code) { return code.replace(/_/g, " "); }

  function say(text) {
    toast.textContent = text;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { toast.hidden = true; }, 2500);
  }

  function select(el) {
    var cur = current();
    if (cur) { cur.classList.remove("current"); }
    if (!el) { return; }
    el.classList.add("current");
    el.focus({ preventScroll: true });
    el.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    var all = items();
    if (!all.length) { return; }
    var i = all.indexOf(current());
    var next = i < 0 ? 0 : Math.min(all.length - 1, Math.max(0, i + step));
    select(all[next]);
  }

  function card(editId) { return queue.querySelector('.item[data-edit-id="' + editId + '"]'); }

  function show(editId, decision, chosen, note) {
    var el = card(editId);
    if (!el) { return null; }
    el.classList.remove("decided-accepted", "decided-rejected");
    el.setAttribute("data-state", decision || "");
    if (decision) { el.classList.add("decided-" + decision); }
    var mine = el.querySelector('[data-role="mine"]');
    mine.textContent = decision ? "you: " + decision + (chosen && chosen.length ? " (" + chosen.map(label).join(", ") + ")" : "") : "";
    el.querySelectorAll('input[name="tags"]').forEach(function (box) { box.checked = (chosen || []).indexOf(box.value) >= 0; });
    var noteField = el.querySelector('input[name="note"]');
    if (noteField) { noteField.value = note || ""; }
    return el;
  }

  function progress(p) {
    if (!p) { return; }
    ["reviewed", "edits", "mine"].forEach(function (k) {
      var node = document.querySelector('[data-p="' + k + '"]');
      if (node) { node.textContent = p[k]; }
    });
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {})
    }).then(function (r) {
      if (r.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(typeof data.detail === "string" ? data.detail : "refused (" + r.status + ")"); }
        return data;
      });
    });
  }

  function decide(action) {
    var el = current();
    if (!el) { say("Pick an item first (j / k)"); return; }
    var chosen = Array.prototype.slice.call(el.querySelectorAll('input[name="tags"]:checked')).map(function (b) { return b.value; });
    var id = el.getAttribute("data-edit-id");
    var noteField = el.querySelector('input[name="note"]');
    var note = noteField && noteField.value.trim() ? noteField.value.trim() : null;
    post("/api/items/" + id + "/decision", { decision: action, tags: chosen, note: note }).then(function (data) {
      show(data.edit_id, data.decision, data.tags, data.note);
      progress(data.progress);
      var all = items();
      var i = all.indexOf(el);
      if (i >= 0 && i + 1 < all.length) { select(all[i + 1]); }
    }).catch(function (err) { say(err.message); });
  }

  function undo() {
    post("/api/undo").then(function (data) {
      if (!data.undone.length) { say("Nothing to undo"); return; }
      var last = null;
      data.undone.forEach(function (u) { last = show(u.edit_id, u.decision, u.tags, u.note) || last; });
      progress(data.progress);
      if (last) { select(last); }
      say("Undone");
    }).catch(function (err) { say(err.message); });
  }

  function toggleTag(n) {
    var el = current();
    if (!el || n > tags.length) { return; }
    var box = el.querySelector('input[name="tags"][value="' + tags[n - 1] + '"]');
    if (box) { box.checked = !box.checked; }
  }

  // forms on each card go through the API too, so the page keeps its place
  queue.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList.contains("decide")) { return; }
    ev.preventDefault();
    select(form.closest(".item"));
    decide(ev.submitter && ev.submitter.value === "reject" ? "reject" : "accept");
  });
  queue.addEventListener("click", function (ev) {
    var el = ev.target.closest(".item");
    if (el && el !== current()) { select(el); }
  });

  document.querySelectorAll(".compare").forEach(function (fig) {
    var range = fig.querySelector(".compare-range");
    var top = fig.querySelector(".compare-top");
    function apply() { top.style.clipPath = "inset(0 0 0 " + range.value + "%)"; }
    range.addEventListener("input", apply);
    apply();
  });

  function toggleHelp(open) { help.hidden = open === undefined ? !help.hidden : !open; }
  var helpOpen = document.getElementById("help-open");
  if (helpOpen) { helpOpen.addEventListener("click", function () { toggleHelp(true); }); }
  help.addEventListener("click", function (ev) { if (ev.target === help) { toggleHelp(false); } });

  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    if (t && (t.tagName === "INPUT" && t.type !== "checkbox" && t.type !== "range" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) {
      if (ev.key === "Escape") { t.blur(); var item = t.closest(".item"); if (item) { select(item); } }
      return;
    }
    var k = ev.key;
    if (k === "Escape") { toggleHelp(false); return; }
    if (k === "?") { toggleHelp(); ev.preventDefault(); return; }
    if (!help.hidden) { return; }
    if (k === "j") { move(1); }
    else if (k === "k") { move(-1); }
    else if (k === "a") { decide("accept"); }
    else if (k === "r") { decide("reject"); }
    else if (k === "u") { undo(); }
    else if (k === "A") { var f = document.getElementById("accept-visible"); if (f) { f.submit(); } }
    else if (k >= "1" && k <= "9") { toggleTag(parseInt(k, 10)); }
    else { return; }
    ev.preventDefault();
  });

  select(items()[0]);
}());
