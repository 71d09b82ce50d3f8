// Survey behaviour: play a clip, count plays, unlock answers only after it played to the end,
// then select an answer and confirm it (one stray tap among 36 buttons must not store an answer).
// Each play fetches the clip anew from byte 0, which is how the server counts plays.
// Without JavaScript the answer buttons submit directly, so the page still works.
(function () {
  "use strict";

  function playsText(left) {
    return left + (left === 1 ? " play left" : " plays left");
  }

  function setupTrial(form) {
    var audio = document.getElementById("clip");
    var play = document.getElementById("play");
    var state = document.getElementById("state");
    var playsLabel = document.getElementById("plays");
    var bar = document.getElementById("confirm-bar");
    var confirm = document.getElementById("confirm");
    var chosenLabel = document.getElementById("chosen");
    var answers = form.querySelectorAll("button.answer");
    var left = parseInt(form.dataset.limit, 10) || 0;
    var plays = 0;
    var endedAt = null;
    var chosen = null;
    var sent = false;

    function say(text) {
      if (state.textContent !== text) { state.textContent = text; }
    }

    function unlocked() {
      return endedAt !== null;
    }

    function unlock() {
      if (endedAt === null) { endedAt = performance.now(); }
      answers.forEach(function (b) { b.disabled = false; });
    }

    function failed(what) {
      play.disabled = left <= 0;
      if (left > 0) { say(what + " Press Play to try again."); return; }
      unlock();  // nothing left to try: the listener answers, the server judges the listening
      say(what + " No plays left: please answer.");
    }

    answers.forEach(function (b) {
      b.disabled = true;
      b.setAttribute("aria-pressed", "false");
    });
    if (left <= 0) { unlock(); }  // a reload after the last play: answer now
    bar.hidden = false;

    play.addEventListener("click", function () {
      if (left <= 0) { return; }
      left -= 1;
      plays += 1;
      playsLabel.textContent = playsText(left);
      play.disabled = true;
      say("Playing…");
      // the clip's URL may carry the listener (?p=...) where the frame refuses cookies
      audio.src = audio.dataset.src + (audio.dataset.src.indexOf("?") < 0 ? "?" : "&") + "play=" + plays;
      var started = audio.play();
      if (started && started.catch) {
        started.catch(function () { failed("The recording could not start."); });
      }
    });

    audio.addEventListener("ended", function () {
      unlock();
      play.disabled = left <= 0;
      say(chosen ? "Finished. Your choice is kept: press Confirm to send it." : "Finished: the answers are unlocked. Choose one, then press Confirm.");
    });

    audio.addEventListener("error", function () { failed("The recording could not be loaded."); });

    answers.forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.preventDefault();  // a tap selects; only Confirm sends
        if (!unlocked() || sent) { return; }
        chosen = button;
        answers.forEach(function (b) {
          b.setAttribute("aria-pressed", b === button ? "true" : "false");
          b.classList.toggle("chosen", b === button);
        });
        confirm.name = button.name;
        confirm.value = button.value;
        confirm.disabled = false;
        confirm.textContent = "Confirm";
        var label = button.querySelector("strong") ? button.querySelector("strong").textContent : button.textContent;
        chosenLabel.textContent = "Selected: " + label.trim() + ". Press Confirm to send it.";
      });
    });

    var confirmPressed = false;  // for browsers without SubmitEvent.submitter (Safari before 15.4)
    confirm.addEventListener("click", function () { confirmPressed = true; });

    form.addEventListener("submit", function (event) {
      var fromConfirm = event.submitter ? event.submitter === confirm : confirmPressed;
      confirmPressed = false;
      if (sent || !unlocked() || chosen === null || !fromConfirm) { event.preventDefault(); return; }
      sent = true;
      form.elements.response_ms.value = String(Math.round(performance.now() - endedAt));
      chosenLabel.textContent = "Sending…";
      // the submitter's name and value are captured now; disable everything only afterwards
      setTimeout(function () {
        confirm.disabled = true;
        answers.forEach(function (b) { b.disabled = true; });
      }, 0);
    });
  }

  function setupPlayOnce(button) {
    button.addEventListener("click", function () {
      button.disabled = true;
      new Audio(button.dataset.src).play();
    });
  }

  function setupRedirect(link) {
    // Prolific and custom redirects: say where the listener is going and when, and let them stay.
    var note = document.getElementById("redirect-note");
    var stay = document.getElementById("redirect-stay");
    var seconds = parseInt(link.dataset.seconds, 10) || 3;
    var where = link.dataset.where || "the study site";
    var timer = setTimeout(function () {
      note.textContent = "Taking you to " + where + " now.";
      window.location.href = link.href;
    }, seconds * 1000);
    note.textContent = "Taking you back to " + where + " in " + seconds + " seconds. If nothing happens, use the link below.";
    stay.hidden = false;
    stay.addEventListener("click", function () {
      clearTimeout(timer);
      stay.hidden = true;
      note.textContent = "You are staying on this page. Use the link below when you are ready to finish.";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("trial");
    if (form) { setupTrial(form); }
    document.querySelectorAll("button.play-once").forEach(setupPlayOnce);
    var mturk = document.getElementById("mturk-submit");
    if (mturk) { mturk.querySelector("button").focus(); }
    var redirect = document.getElementById("redirect");
    if (redirect) { setupRedirect(redirect); }
  });
})();
