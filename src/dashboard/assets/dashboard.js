// The dashboard's one client script. Pages work without it; with it, each live region
// ([data-live-refresh]) is re-rendered by the server when events arrive on its SSE stream
// ([data-live-src], same origin, authenticated by the session cookie) or on a timer
// ([data-live-poll]). Refreshes are coalesced: at most one request in flight per region.
"use strict";

// Every event type of the log: EventSource only calls listeners of the names it was given.
const EVENT_TYPES = [
  "task.queued",
  "task.reprocess_requested",
  "task.started",
  "step.started",
  "step.completed",
  "scenes.generated",
  "task.completed",
  "task.failed",
  "task.dead_lettered",
  "callback.attempted",
  "callback.delivered",
  "callback.failed",
  "snapshot",
];

function liveRegion(region) {
  const url = region.dataset.liveRefresh;
  let inFlight = false;
  let again = false;
  let stopped = false;

  async function refresh() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    try {
      const response = await fetch(url, {
        headers: { "x-dashboard-fragment": "1" },
        credentials: "same-origin",
      });
      if (response.status === 401) {
        stopped = true;
        location.reload();
        return;
      }
      if (response.ok) {
        const html = await response.text();
        // Keep the focused element's place when it is inside the region (by id).
        const focused = region.contains(document.activeElement) ? document.activeElement.id : "";
        region.innerHTML = html;
        region.dataset.refreshedAt = String(Date.now());
        if (focused) document.getElementById(focused)?.focus();
        region.dispatchEvent(new CustomEvent("dashboard:refreshed", { bubbles: true }));
      }
    } catch {
      // Offline for a moment: the next event or tick tries again.
    } finally {
      inFlight = false;
      if (again && !stopped) {
        again = false;
        setTimeout(refresh, 50);
      }
    }
  }

  // An event can arrive before the views it changes were projected: refresh at once, and once
  // more shortly after the last event.
  let trailing = 0;
  function changed() {
    refresh();
    clearTimeout(trailing);
    trailing = setTimeout(refresh, 400);
  }

  const src = region.dataset.liveSrc;
  if (src) {
    const events = new EventSource(src, { withCredentials: true });
    for (const type of EVENT_TYPES) {
      events.addEventListener(type, (e) => {
        if (type !== "snapshot") changed();
        region.dataset.lastEvent = e.lastEventId || "";
      });
    }
    events.addEventListener("end", () => {
      events.close();
      changed();
    });
    // What happened between rendering the page and (re)connecting is not replayed: refresh.
    events.addEventListener("open", () => {
      region.dataset.liveConnected = "true";
      changed();
    });
    addEventListener("pagehide", () => events.close());
  }
  // Polling stops once the region says there is nothing more to wait for ([data-live-idle]).
  const poll = Number(region.dataset.livePoll || 0);
  if (poll > 0) {
    const timer = setInterval(() => {
      if (region.querySelector("[data-live-idle]")) clearInterval(timer);
      else if (!document.hidden) refresh();
    }, poll);
  }
}

function selectAll(box) {
  const form = box.form;
  box.addEventListener("change", () => {
    for (const input of form.querySelectorAll(`input[name="${box.dataset.selectAll}"]`)) {
      input.checked = box.checked;
    }
  });
}

document.querySelectorAll("[data-live-refresh]").forEach(liveRegion);
document.querySelectorAll("[data-select-all]").forEach(selectAll);
