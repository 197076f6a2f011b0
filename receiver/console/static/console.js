// sonic-receiver console: confirmation before every action, and live lists. No dependencies.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset && form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
for (const target of document.querySelectorAll("[data-live]")) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(target.dataset.live, { credentials: "same-origin" });
      if (answer.redirected) { window.location.reload(); return; }  // the session ended
      if (answer.ok) {
        const html = await answer.text();
        if (html !== target.dataset.last) { target.innerHTML = html; target.dataset.last = html; }
      }
    } catch (_) { /* the next round will try again */ } finally { busy = false; }
  }, 2000);
}
