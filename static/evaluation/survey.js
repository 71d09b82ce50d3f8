// Survey behaviour: play a clip, count plays, unlock answers only after it played to the end.
// Each play fetches the clip anew from byte 0, which is how the server counts plays.
(function () {
  "use strict";

  function setupTrial(form) {
    var audio = document.getElementById("clip");
    var play = document.getElementById("play");
    var playsLabel = document.getElementById("plays");
    var answers = form.querySelectorAll("button.answer");
    var left = parseInt(form.dataset.limit, 10) || 0;
    var plays = 0;
    var endedAt = null;
    var sent = false;

    function label() {
      playsLabel.textContent = left + (left === 1 ? " play left" : " plays left");
    }

    play.addEventListener("click", function () {
      if (left <= 0) { return; }
      left -= 1;
      plays += 1;
      label();
      play.disabled = true;
      // the clip's URL may carry the listener (?p=...) where the frame refuses cookies
      audio.src = audio.dataset.src + (audio.dataset.src.indexOf("?") < 0 ? "?" : "&") + "play=" + plays;
      var started = audio.play();
      if (started && started.catch) {
        started.catch(function () { play.disabled = left <= 0; });
      }
    });

    audio.addEventListener("ended", function () {
      if (endedAt === null) { endedAt = performance.now(); }
      answers.forEach(function (b) { b.disabled = false; });
      play.disabled = left <= 0;
      document.getElementById("hint").hidden = true;
    });

    audio.addEventListener("error", function () {
      play.disabled = left <= 0;
    });

    form.addEventListener("submit", function (event) {
      if (sent || endedAt === null) { event.preventDefault(); return; }
      sent = true;
      form.elements.response_ms.value = String(Math.round(performance.now() - endedAt));
      // keep the pressed button's value: disable the others only after the browser captured it
      setTimeout(function () { answers.forEach(function (b) { b.disabled = true; }); }, 0);
    });
  }

  function setupPlayOnce(button) {
    button.addEventListener("click", function () {
      button.disabled = true;
      new Audio(button.dataset.src).play();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("trial");
    if (form) { setupTrial(form); }
    document.querySelectorAll("button.play-once").forEach(setupPlayOnce);
    var mturk = document.getElementById("mturk-submit");
    if (mturk) { mturk.querySelector("button").focus(); }
    // Prolific and custom redirects: go on by themselves, the link stays for browsers that block it
    var redirect = document.getElementById("redirect");
    if (redirect) { setTimeout(function () { window.location.href = redirect.href; }, 3000); }
  });
})();
