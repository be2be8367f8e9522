// Keyboard-first labeling. Every key has a visible control behind it, so the page also works
// with a mouse or without JavaScript. Keys are ignored while typing in a text box (Esc leaves it).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("judge");
  const help = document.getElementById("help");
  const guidelines = document.getElementById("guidelines");
  const editLast = document.getElementById("edit-last");
  const toggle = (el) => { if (el) el.hidden = !el.hidden; };

  if (!form) {
    document.addEventListener("keydown", (e) => {
      if (e.key === "?") toggle(help);
      else if (e.key === "u" && editLast) editLast.click();
    });
    return;
  }
  const task = form.dataset.task;
  const cards = Array.from(form.querySelectorAll(".candidate"));
  const scores = Array.from(form.querySelectorAll("input.score"));
  const reason = form.querySelector("input[name=reason]");
  let focus = 0;

  const showFocus = () => cards.forEach((card, i) => card.classList.toggle("focused", i === focus));
  const pick = (value) => {
    const radio = form.querySelector(`input[name=choice][value=${value}]`);
    radio.checked = true;
    cards.forEach((card, i) =>
      card.classList.toggle("chosen", (value === "left" && i === 0) || (value === "right" && i === 1)));
  };
  const pairKeys = { "1": "left", a: "left", "2": "right", b: "right",
                     "3": "tie", t: "tie", "4": "both_bad", x: "both_bad" };

  // m: the responses' Markdown source instead of the formatted text, and back
  const showSource = () => document.querySelectorAll(".text.rendered, .text.source")
    .forEach((el) => { el.hidden = !el.hidden; });

  if (task !== "pairwise") showFocus();
  const prefilled = form.querySelector("input[name=choice]:checked");  // editing a judgment
  if (prefilled) pick(prefilled.value);

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = e.target.matches("input[type=text], input:not([type]), textarea");
    if (typing) {
      if (e.key === "Escape") e.target.blur();
      return;  // Enter in the reason box submits the form by itself
    }
    const key = e.key;
    if (key === "?") { toggle(help); }
    else if (key === "Escape") { if (help) help.hidden = true; if (guidelines) guidelines.hidden = true; }
    else if (key === "g") { toggle(guidelines); }
    else if (key === "r") { reason.focus(); }
    else if (key === "s" && document.getElementById("skip")) { form.requestSubmit(document.getElementById("skip")); }
    else if (key === "u" && editLast) { editLast.click(); }
    else if (key === "m") { showSource(); }
    else if (key === "Enter") {
      if (e.target.matches("button")) return;  // the button's own click
      form.requestSubmit();
    }
    else if (task === "pairwise" && key in pairKeys) { pick(pairKeys[key]); }
    else if (task !== "pairwise" && (key === "j" || key === "ArrowDown")) { focus = Math.min(focus + 1, cards.length - 1); showFocus(); }
    else if (task !== "pairwise" && (key === "k" || key === "ArrowUp")) { focus = Math.max(focus - 1, 0); showFocus(); }
    else if (task === "ranking" && key === "n") { const box = form.querySelector("input[name=not_rankable]"); box.checked = !box.checked; }
    else if (task !== "pairwise" && /^[0-9]$/.test(key)) {
      if (e.target.matches("input.score")) return;  // typing into the number box itself
      scores[focus].value = key;
      focus = Math.min(focus + 1, cards.length - 1);
      showFocus();
    }
    else { return; }
    e.preventDefault();
  });
});
