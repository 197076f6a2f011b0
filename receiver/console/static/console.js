// sonic-receiver console: confirmation before every action, and live pages. No dependencies.
//
// A live page (body[data-live-page]) follows /ui/live: server-sent events carrying the HTML of
// its changed [data-live] blocks, or, where EventSource is missing or keeps failing, the same
// blocks polled every few seconds. A block is swapped only when its HTML changed, keeping the
// scroll position, the focused control, open <details> and a playing player (a block holding
// one waits until it stops). When the session ends, the page goes to the login form, which
// returns here.
"use strict";

// "3 min ago" kept current from each span's time (data-at), on the server's clock
const serverSkew = Number(document.body.dataset.now || 0) - Date.now() / 1000;
const agoText = (seconds) => {
  const s = Math.trunc(seconds);
  if (Math.abs(s) < 5) return "just now";
  const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  const [unit, size] = units.find(([, n]) => Math.abs(s) >= n);
  const amount = `${Math.trunc(Math.abs(s) / size)} ${unit}`;
  return s < 0 ? `in ${amount}` : `${amount} ago`;
};
const tick = () => {
  const now = Date.now() / 1000 + serverSkew;
  for (const span of document.querySelectorAll(".ago[data-at]")) {
    span.textContent = agoText(now - Number(span.dataset.at));
  }
};
window.setInterval(tick, 10000);

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset && form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

(() => {
  const page = document.body.dataset.livePage;
  if (!page) return;
  const state = document.getElementById("live-state");
  const last = {};
  let pending = null;
  const POLL_MS = 5000;

  const say = (text) => { if (state) state.textContent = text; };
  const toLogin = () => {
    window.location.assign("/ui/login?ended=1&next=" + encodeURIComponent(page));
  };

  const busy = (block) => Array.from(block.querySelectorAll("audio, video"))
    .some((media) => !media.paused && !media.ended);

  const swap = (block, html) => {
    const focused = document.activeElement;
    const focusId = focused && block.contains(focused) ? focused.id : null;
    const open = new Set(Array.from(block.querySelectorAll("details[open]"))
      .map((d) => d.dataset.key).filter(Boolean));
    const x = window.scrollX, y = window.scrollY;
    block.innerHTML = html;
    for (const details of block.querySelectorAll("details[data-key]")) {
      if (open.has(details.dataset.key)) details.open = true;
    }
    if (focusId) {
      const again = document.getElementById(focusId);
      if (again) again.focus({ preventScroll: true });
    }
    window.scrollTo(x, y);
  };

  // what differs only because time passed is no change (the spans tick on their own)
  const shown = (html) => html.replace(/<span class="(?:ago|tick)"[^>]*>[^<]*<\/span>/g, "");

  // the block as this browser serializes it, to compare with what the page already shows
  const serialized = (html) => {
    const template = document.createElement("template");
    template.innerHTML = html;
    return shown(template.innerHTML);
  };

  const apply = (blocks) => {
    pending = null;
    for (const [name, html] of Object.entries(blocks)) {
      const block = document.querySelector(`[data-live="${name}"]`);
      if (!block) continue;
      if (last[name] === undefined && serialized(html) === shown(block.innerHTML)) {
        last[name] = shown(html);  // the first news is what the page already shows
        continue;
      }
      if (last[name] === shown(html)) continue;
      if (busy(block)) { pending = blocks; continue; }
      swap(block, html);
      last[name] = shown(html);
    }
    document.body.dataset.liveSeen = "1";
  };

  // a block waiting for its player to stop is swapped once it does
  document.addEventListener("pause", () => { if (pending) apply(pending); }, true);
  document.addEventListener("ended", () => { if (pending) apply(pending); }, true);

  const url = (once) => "/ui/live?page=" + encodeURIComponent(page) + (once ? "&once=1" : "");

  const poll = () => {
    say("Updates every few seconds.");
    const round = async () => {
      if (!document.hidden) {
        try {
          const answer = await fetch(url(true), { credentials: "same-origin" });
          if (answer.status === 401) { toLogin(); return; }
          if (answer.ok) apply(await answer.json());
        } catch (_) { /* the next round tries again */ }
      }
      window.setTimeout(round, POLL_MS);
    };
    window.setTimeout(round, POLL_MS);
  };

  if (!("EventSource" in window)) { poll(); return; }
  let failures = 0;
  const follow = () => {
    const source = new EventSource(url(false));
    source.addEventListener("open", () => { failures = 0; say("Updates live."); });
    source.addEventListener("blocks", (event) => apply(JSON.parse(event.data)));
    source.addEventListener("ended", () => { source.close(); toLogin(); });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) return;  // the browser reconnects itself
      failures += 1;
      // refused (401: the session ended) or failing again and again: poll instead
      fetch(url(true), { credentials: "same-origin" }).then((answer) => {
        if (answer.status === 401) toLogin();
        else if (failures < 3) window.setTimeout(follow, 2000);
        else poll();
      }, () => (failures < 3 ? window.setTimeout(follow, 2000) : poll()));
    });
  };
  follow();
})();
