// Keyboard: 1/2/3 pick a class of the active task (then move on), up/down change task,
// Enter saves, right arrow skips. The mouse works as well: the radios are a plain form.
(function () {
  "use strict";
  var tasks = Array.prototype.slice.call(document.querySelectorAll("fieldset.task"));
  if (!tasks.length) { return; }
  var active = 0;
  function show() {
    tasks.forEach(function (t, i) { t.classList.toggle("active", i === active); });
  }
  tasks.forEach(function (t, i) {
    t.addEventListener("click", function () { active = i; show(); });
  });
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) { return; }
    var n = parseInt(e.key, 10);
    if (n >= 1 && n <= 9) {
      var radios = tasks[active].querySelectorAll("input[type=radio]");
      if (n <= radios.length) {
        radios[n - 1].checked = true;
        active = Math.min(active + 1, tasks.length - 1);
        show();
      }
      e.preventDefault();
    } else if (e.key === "ArrowDown") {
      active = Math.min(active + 1, tasks.length - 1); show(); e.preventDefault();
    } else if (e.key === "ArrowUp") {
      active = Math.max(active - 1, 0); show(); e.preventDefault();
    } else if (e.key === "Enter") {
      var form = document.getElementById("review-form");
      if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }  // requestSubmit: an audit's every task is required
      e.preventDefault();
    } else if (e.key === "ArrowRight") {
      document.getElementById("skip-form").submit(); e.preventDefault();
    }
  });
  show();
})();
