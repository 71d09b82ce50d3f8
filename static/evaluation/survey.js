// Survey behaviour: play a clip, count plays, unlock answers only after it played to the end,
// then select an answer and confirm it (one stray tap among 36 buttons must not store an answer).
// Each play fetches the clip anew from byte 0, which is how the server counts plays.
// Without JavaScript the player and Play buttons stay hidden, a plain player and a note show
// instead, and the answer buttons submit directly, so the page still works.
//
// Phones lose their connection: a clip that fails or stalls, and an answer that cannot be sent,
// are said beside the control, the listener can try again, and the page asks the server (the
// authority on plays, answers and whether the study is open) where things stand rather than guessing.
(function () {
  "use strict";

  var STALL_MS = 8000;  // no byte of the clip for this long: the load has stalled
  var SLOW_LOAD_MS = 1500;  // the clip's first bytes still not there after this long: say the connection is slow
  var SEND_SLOW_MS = 4000;  // an answer still unanswered after this long: say so
  var SEND_GIVE_UP_MS = 15000;  // and after this long: let the listener send it again
  var CHECK_MS = 10000;  // how long asking the server about the page may take

  function playsText(left) {
    return left + (left === 1 ? " play left" : " plays left");
  }

  // fetch with a time limit, where the browser can abort; rejects on a network failure or the limit
  function fetchWithin(url, options, ms) {
    var controller = window.AbortController ? new AbortController() : null;
    var timer = null;
    if (controller) {
      options.signal = controller.signal;
      timer = setTimeout(function () { controller.abort(); }, ms);
    }
    return fetch(url, options).then(function (response) {
      if (timer) { clearTimeout(timer); }
      return response;
    }, function (error) {
      if (timer) { clearTimeout(timer); }
      throw error;
    });
  }

  function setupTrial(form) {
    var audio = document.getElementById("clip");
    var stateLine = document.getElementById("state-line");
    var play = document.getElementById("play");
    var state = document.getElementById("state");
    var playsLabel = document.getElementById("plays");
    var bar = document.getElementById("confirm-bar");
    var confirm = document.getElementById("confirm");
    var chosenLabel = document.getElementById("chosen");
    var answers = form.querySelectorAll("button.answer");
    var page = form.dataset.page || window.location.href;  // this trial page: the server's view of where the listener is
    var token = form.elements.token.value;
    var left = parseInt(form.dataset.limit, 10) || 0;
    var plays = 0;
    var failedPlay = 0;  // the play whose failure is being handled (error and a refused play() both report it)
    var endedAt = null;
    var chosen = null;
    var sent = false;
    var stallTimer = null;

    function say(text) {
      if (state.textContent !== text) { state.textContent = text; }
    }

    function showPlays() {
      var text = playsText(left);
      if (playsLabel.textContent !== text) { playsLabel.textContent = text; }
    }

    function unlocked() {
      return endedAt !== null;
    }

    function unlock() {
      if (endedAt === null) { endedAt = performance.now(); }
      if (!sent) { answers.forEach(function (b) { b.disabled = false; }); }
    }

    function stopWatching() {
      clearTimeout(slowLoad);
      if (stallTimer !== null) { clearTimeout(stallTimer); stallTimer = null; }
    }

    function watch() {  // (re)started by every sign of life while the clip loads
      stopWatching();
      stallTimer = setTimeout(function stalled() {
        if (document.hidden) { stallTimer = setTimeout(stalled, STALL_MS); return; }  // a phone's locked screen is no stall
        stallTimer = null;
        failed("The recording stopped loading.");
      }, STALL_MS);
    }

    function stopLoading() {
      audio.removeAttribute("src");
      try { audio.load(); } catch (e) { /* nothing to stop */ }
    }

    // A play failed (no connection, refused, undecodable, stalled): ask the server how many plays are left and whether
    // this trial is still the one to answer; it alone counts plays, so the page never guesses them away.
    function failed(what) {
      if (failedPlay === plays) { return; }
      failedPlay = plays;
      var attempt = plays;
      stopWatching();
      stopLoading();
      play.disabled = true;
      say(what + " Checking…");
      if (!window.fetch) { settle(what, null); return; }
      fetchWithin(page, {credentials: "same-origin", cache: "no-store"}, CHECK_MS).then(function (response) {
        return response.text().then(function (html) { return {response: response, html: html}; });
      }).then(function (got) {
        if (attempt !== plays) { return; }
        var doc = new DOMParser().parseFromString(got.html, "text/html");
        var current = doc.querySelector("form#trial");
        if (!got.response.ok || !current || current.elements.token.value !== token) {
          // the study closed, the trial was answered elsewhere, the session is gone: show what the server says now
          window.location.replace(page);
          return;
        }
        settle(what, parseInt(current.dataset.limit, 10) || 0);
      }, function () {
        if (attempt !== plays) { return; }
        left += 1;  // no connection: the play most likely never reached the server (if it did, the server says so next time)
        showPlays();
        play.disabled = false;
        say(what + " Your connection seems to be down: check it, then press Play to try again.");
      });
    }

    function settle(what, serverLeft) {
      if (serverLeft !== null) { left = serverLeft; }
      showPlays();
      play.disabled = left <= 0;
      if (left > 0) { say(what + " Press Play to try again."); return; }
      unlock();  // nothing left to try: the listener answers, the server judges the listening
      say(what + " No plays left: please answer.");
    }

    answers.forEach(function (b) {
      b.disabled = true;
      b.setAttribute("aria-pressed", "false");
    });

    // Keyboard: the answers are one stop of the Tab key (the chosen one, else the first), arrow keys move among them,
    // so Confirm is one Tab away from the choice instead of up to 36.
    var list = Array.prototype.slice.call(answers);
    function rove(to) {
      list.forEach(function (b) { b.tabIndex = b === to ? 0 : -1; });
    }
    rove(list[0]);
    var keys = document.getElementById("keys");  // the hint, only where the arrow keys work
    if (keys && list.length) {
      keys.hidden = false;
      list[0].parentNode.setAttribute("aria-describedby", "keys");
    }
    list.forEach(function (button, i) {
      button.addEventListener("keydown", function (event) {
        var step = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[event.key];
        var to = null;
        if (step) { to = list[(i + step + list.length) % list.length]; }
        if (event.key === "Home") { to = list[0]; }
        if (event.key === "End") { to = list[list.length - 1]; }
        if (to === null) { return; }
        event.preventDefault();
        rove(to);
        to.focus();
      });
    });
    if (left <= 0) { unlock(); }  // a reload after the last play: answer now
    stateLine.hidden = false;
    play.disabled = left <= 0;  // the page comes with Play disabled: without this script it would do nothing
    bar.hidden = false;

    play.addEventListener("click", function () {
      if (left <= 0 || play.disabled) { return; }
      left -= 1;
      plays += 1;
      showPlays();
      play.disabled = true;
      say("Playing…");
      var attempt = plays;
      // the clip's URL may carry the listener (?p=...) where the frame refuses cookies
      audio.src = audio.dataset.src + (audio.dataset.src.indexOf("?") < 0 ? "?" : "&") + "play=" + plays;
      watch();
      var started = audio.play();
      if (started && started.catch) {
        started.catch(function (error) {
          if (attempt !== plays || (error && error.name === "AbortError")) { return; }  // a newer play, or the load was stopped
          failed("The recording could not start.");
        });
      }
    });

    ["progress", "loadeddata", "timeupdate"].forEach(function (name) {
      audio.addEventListener(name, function () { if (stallTimer !== null) { watch(); } });
    });
    var slowLoad = null;  // every play waits a moment for its first bytes: only a longer wait is worth saying
    audio.addEventListener("waiting", function () {
      if (!audio.getAttribute("src")) { return; }
      clearTimeout(slowLoad);
      slowLoad = setTimeout(function () {
        if (audio.getAttribute("src") && stallTimer !== null) { say("Loading… the connection is slow."); }
      }, SLOW_LOAD_MS);
      watch();
    });
    audio.addEventListener("playing", function () {
      clearTimeout(slowLoad);
      stopWatching();
      say("Playing…");
    });

    audio.addEventListener("ended", function () {
      stopWatching();
      unlock();
      play.disabled = left <= 0;
      say(chosen ? "Finished. Your choice is kept: press Confirm to send it." : "Finished: the answers are unlocked. Choose one, then press Confirm.");
    });

    audio.addEventListener("error", function () {
      if (!audio.getAttribute("src")) { return; }  // the load was stopped on purpose
      failed("The recording could not be loaded.");
    });

    answers.forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.preventDefault();  // a tap selects; only Confirm sends
        if (!unlocked() || sent) { return; }
        chosen = button;
        rove(button);
        answers.forEach(function (b) {
          b.setAttribute("aria-pressed", b === button ? "true" : "false");
          b.classList.toggle("chosen", b === button);
        });
        confirm.name = button.name;
        confirm.value = button.value;
        confirm.disabled = false;
        confirm.textContent = "Confirm";
        chosenLabel.textContent = "Selected: " + chosenText() + ". Press Confirm to send it.";
      });
    });

    function chosenText() {
      var label = chosen.querySelector("strong") ? chosen.querySelector("strong").textContent : chosen.textContent;
      return label.trim();
    }

    var confirmPressed = false;  // for browsers without SubmitEvent.submitter (Safari before 15.4)
    confirm.addEventListener("click", function () { confirmPressed = true; });

    // The answer is sent in the background (fetch), not as a plain form post: a connection that resets during a plain
    // post replaces the survey with the browser's error page ("This site can't be reached", inside MTurk's frame too),
    // whose Reload asks to re-submit a form. Sent this way the page stays: offline, a reset connection and a server that
    // does not answer all keep the answer here with Send again (the server stores an answer once and answers a repeat
    // like the first, so a resend after a lost reply is harmless). A browser without fetch posts the form as before.
    var slowTimer = null;
    var giveUpTimer = null;
    var attempt = 0;  // each send is one attempt: a failure of an earlier, abandoned one is not this one's
    var stopSend = null;  // stops the send in progress
    var leaving = false;  // the server answered with its page: this trial page is done

    function notSent(why) {
      clearTimeout(slowTimer);
      clearTimeout(giveUpTimer);
      attempt += 1;
      if (stopSend) { stopSend(); stopSend = null; }
      sent = false;
      confirm.disabled = false;
      confirm.textContent = "Send again";
      chosenLabel.textContent = "Your answer (" + chosenText() + ") " + why + " Press Send again to send it.";
    }

    function leave() {  // the server answered: what it sent replaces this trial page, nothing here is waited for any more
      leaving = true;
      clearTimeout(slowTimer);
      clearTimeout(giveUpTimer);
    }

    function lock() {  // while the answer is on its way, it stays the one chosen
      confirm.disabled = true;
      answers.forEach(function (b) { b.disabled = true; });
    }

    var LOST = "may not have arrived: the connection was lost while sending. It is never stored twice, so sending it again is safe.";
    window.addEventListener("offline", function () {
      if (sent && !leaving) { notSent(LOST); }
    });
    window.addEventListener("online", function () {
      if (!sent && !leaving && chosen !== null && confirm.textContent === "Send again") {
        chosenLabel.textContent = "The connection is back. Press Send again to send your answer (" + chosenText() + ").";
      }
    });

    function formBody() {  // what the plain post of Confirm sends, encoded the same way
      var fields = Array.prototype.map.call(form.querySelectorAll("input[name]"), function (input) {
        return encodeURIComponent(input.name) + "=" + encodeURIComponent(input.value);
      });
      fields.push(encodeURIComponent(confirm.name) + "=" + encodeURIComponent(confirm.value));
      return fields.join("&");
    }

    // A page instead of the next trial (the answer refused, the study closed, the recording skipped): show it, as the
    // plain post would. The address stays this trial page's, so Reload asks the server where things stand.
    function show(html, status) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      if (!doc.body || !doc.body.textContent.trim()) {  // nothing to show (an empty error from a proxy): keep the answer
        notSent("was not saved: the server had a problem (error " + status + ").");
        return;
      }
      leave();
      document.title = doc.title;
      document.documentElement.replaceChild(document.importNode(doc.body, true), document.body);
      var heading = document.querySelector("h1");
      if (heading) { heading.tabIndex = -1; heading.focus(); }  // where a screen reader starts reading the new page
    }

    function send() {
      var mine = attempt;
      var controller = window.AbortController ? new AbortController() : null;
      stopSend = function () { if (controller) { controller.abort(); } };
      fetch(form.action, {  // the form's action: it carries the listener (?p=...) where the frame refuses cookies
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/x-www-form-urlencoded"},
        body: formBody(),
        redirect: "manual",  // the server's 303 is not followed here: the page below is loaded once, not twice
        signal: controller ? controller.signal : undefined
      }).then(function (response) {
        if (response.type === "opaqueredirect" || response.redirected) {
          // Stored (or stored already): the server's 303 sends the listener on, always through this trial page, which
          // shows where they are now (the next trial, or the next step). Go there with a plain GET that replaces this
          // page in history: Reload then reloads that page, with no form to re-submit, and Back does not return to an
          // answered trial. (A browser that followed the redirect anyway says where it ended.)
          leave();
          window.location.replace(response.redirected ? response.url : page);
          return;
        }
        return response.text().then(function (html) {
          if (mine === attempt && !leaving) { show(html, response.status); }
        });
      }).then(null, function () {  // no connection, reset, given up on (aborted), or the reply broke off
        if (mine === attempt && !leaving) { notSent(LOST); }
      });
    }

    form.addEventListener("submit", function (event) {
      var fromConfirm = event.submitter ? event.submitter === confirm : confirmPressed;
      confirmPressed = false;
      if (sent || !unlocked() || chosen === null || !fromConfirm) { event.preventDefault(); return; }
      if (!form.elements.response_ms.value) {  // the first try's time counts, not a resend's
        form.elements.response_ms.value = String(Math.round(performance.now() - endedAt));
      }
      if (navigator.onLine === false) {
        event.preventDefault();
        notSent("was not sent: this device is offline. Check your connection (Wi-Fi or mobile data).");
        return;
      }
      sent = true;
      attempt += 1;
      chosenLabel.textContent = "Sending your answer (" + chosenText() + ")…";
      slowTimer = setTimeout(function () {
        chosenLabel.textContent = "Still sending your answer (" + chosenText() + "): the connection is slow, please wait…";
      }, SEND_SLOW_MS);
      giveUpTimer = setTimeout(function () {
        notSent("may not have arrived: the server did not answer in time. It is never stored twice, so sending it again is safe.");
      }, SEND_GIVE_UP_MS);
      if (window.fetch) {
        event.preventDefault();
        send();  // reads the fields now
        lock();
      } else {
        stopSend = function () { window.stop(); };  // the plain post: keep this page rather than the browser's error page
        setTimeout(lock, 0);  // the post reads the submitter's name and value after this handler: disable only then
      }
    });

    // Safari may show this page again from its back-forward cache (Back after answering): it is stale; ask the server.
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) { window.location.replace(page); }
    });
  }

  function setupPlayOnce(button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      button.disabled = true;
      var sound = new Audio(button.dataset.src);
      var note = button.parentNode.querySelector(".hp-note");
      function trouble() {
        button.disabled = false;
        if (note) { note.textContent = "The sound could not be played. Check your connection, then press Play again."; }
      }
      sound.addEventListener("error", trouble);
      var started = sound.play();
      if (started && started.catch) { started.catch(trouble); }
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
