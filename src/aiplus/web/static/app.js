// The control room's and portal's only script (the Content-Security-Policy allows no inline code).
// - [data-copy=ID]: copies the text of element ID to the clipboard.
// - form[data-confirm]: asks before submitting.
// - #live[data-src]: replaces its content with a fresh server-rendered fragment every two seconds.
"use strict";

function copyText(button) {
  const target = document.getElementById(button.dataset.copy);
  if (!target) return;
  const text = target.textContent;
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => selectText(target));
  } else {
    selectText(target);
    try { if (document.execCommand("copy")) done(); } catch (e) { /* the selection stays for Ctrl+C */ }
  }
}

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

function pollLive(container) {
  let failures = 0;
  const tick = async () => {
    try {
      const response = await fetch(container.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.assign("/admin/ui/signin"); return; }
      if (!response.ok) throw new Error(String(response.status));
      container.innerHTML = await response.text();
      failures = 0;
    } catch (e) {
      failures += 1;
      const note = document.getElementById("updated");
      if (note) note.textContent = "Cannot reach the server; retrying…";
    }
    setTimeout(tick, Math.min(2000 * 2 ** failures, 30000));
  };
  setTimeout(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-copy]");
    if (button) copyText(button);
  });
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  const live = document.getElementById("live");
  if (live && live.dataset.src) pollLive(live);
});
