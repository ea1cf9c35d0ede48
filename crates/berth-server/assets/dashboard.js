// berth dashboard: live parts of pages, without inline script (the CSP forbids it).
// Everything shown here is text from the server put in with textContent, never as HTML, except
// the page fragments fetched from this same server, which it has already escaped.
"use strict";

// Elements with data-refresh="MS" are fetched again from the page's own URL every MS ms and
// replaced in place; the refresh stops when the new element no longer asks for it (a run that
// ended).
function refresh(el) {
  const every = parseInt(el.dataset.refresh, 10);
  if (!(every > 0) || !el.id) return;
  setTimeout(async () => {
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected || !response.ok) { refresh(el); return; }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById(el.id);
      if (!fresh) return;
      const node = document.importNode(fresh, true);
      el.replaceWith(node);
      refresh(node);
    } catch (e) {
      refresh(el);
    }
  }, every);
}

// The run page's log: the run's events over server-sent events, stdout and stderr into the
// log, the other kinds into the events table.
function follow(log) {
  const status = document.getElementById("log-status");
  const events = document.getElementById("events");
  const source = new EventSource(log.dataset.events);
  const say = (text) => { if (status) status.textContent = text; };
  source.onopen = () => say("Following the log live.");
  const line = (kind) => (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = event.data.endsWith("\n") ? event.data : event.data + "\n";
    const atBottom = window.innerHeight + window.scrollY >= document.body.offsetHeight - 40;
    log.appendChild(span);
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  source.addEventListener("stdout", line("stdout"));
  source.addEventListener("stderr", line("stderr"));
  const other = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (!events) return;
    const row = document.createElement("tr");
    const time = String(event.ts).slice(11, 19);
    for (const value of [String(event.seq), time, event.kind, event.data]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.appendChild(cell);
    }
    events.appendChild(row);
  };
  source.onmessage = other;
  // The kinds of berth's event log (berth-core's event.rs) and the server's own.
  for (const kind of ["run_created", "fallback", "image_pulled", "container_created", "held_container",
    "queued", "container_evicted", "started", "agent", "signal", "warning", "egress", "exited",
    "artifacts_collected", "container_removed", "container_kept", "finished", "state",
    "cancel_requested"]) {
    source.addEventListener(kind, other);
  }
  source.addEventListener("end", () => {
    source.close();
    say("The run has ended; this is its whole log.");
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) say("The log stream closed; reload to try again.");
    else say("Reconnecting…");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  const log = document.getElementById("log");
  if (log && log.dataset.events) follow(log);
});
