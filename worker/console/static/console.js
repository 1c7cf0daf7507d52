// The console's only script: "select every entry shown" on the failed-task list.
// No inline script anywhere (the Content-Security-Policy allows this file only).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const all of document.querySelectorAll("input[data-select-all]")) {
    const name = all.getAttribute("data-select-all");
    const boxes = () => all.form.querySelectorAll(`input[type=checkbox][name="${name}"]`);
    all.addEventListener("change", () => {
      for (const box of boxes()) box.checked = all.checked;
    });
    all.form.addEventListener("change", (event) => {
      if (event.target === all) return;
      const list = [...boxes()];
      all.checked = list.length > 0 && list.every((box) => box.checked);
      all.indeterminate = !all.checked && list.some((box) => box.checked);
    });
  }
});
