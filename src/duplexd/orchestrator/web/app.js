// duplex web client: one button, WebRTC (WHIP) to the orchestrator that serves this page.
// Mic -> Opus -> orchestrator; reply audio back on the same peer connection; the protocol's
// JSON events (docs/protocol.md) on a data channel. No build step, no dependencies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const SILENCE_DB = -50; // reply audio below this is silence
  const MIC_SPEECH_DB = -40; // mic above this is (probably) you talking
  const STOP_HOLD_MS = 250; // reply silent this long = it stopped (for the level meter state)
  const BARGE_SETTLE_MS = 1500; // after a flush, silent this long = the interrupted reply is over
  const MIC_ONSET_MS = 30; // mic loud this long = you started talking
  const MIC_OFFSET_MS = 300; // mic quiet this long = you stopped
  const MAX_RETRIES = 6;

  // Everything measured here, for people and for tests (window.duplex).
  const D = (window.duplex = {
    conn: "idle", // idle | connecting | connected | dropped
    state: "idle", // the session's state: listening | speaking | barged_in
    sessionId: null,
    resource: null, // the WHIP session URL (DELETE ends it)
    model: null,
    events: [],
    turns: {}, // turn -> figures
    bargeins: [], // page-measured barge-ins
    micDb: -120,
    remoteDb: -120,
    remoteOnsets: [], // performance.now() when reply audio started being heard
    remoteHeardMs: 0, // total time reply audio was audible
    micOnsetAt: null,
    micOffsetAt: null,
    remoteLastLoud: null,
    lastNotice: "",
    trace: [], // the last 15 s of [t, mic dB, reply dB], every 10 ms
    reconnects: 0,
  });

  // WebRTC figures of the reply stream (Chrome's getStats), e.g. await duplex.rtcStats()
  D.rtcStats = async () => {
    if (!pc) return null;
    const out = {};
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        const n = r.jitterBufferEmittedCount || 0;
        out.jitter_buffer_ms = n ? (1000 * r.jitterBufferDelay) / n : null;
        out.jitter_buffer_target_ms = n ? (1000 * (r.jitterBufferTargetDelay || 0)) / n : null;
        out.jitter_ms = 1000 * (r.jitter || 0);
        out.packets_received = r.packetsReceived;
        out.packets_lost = r.packetsLost;
        out.concealed_samples = r.concealedSamples;
      } else if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
        out.rtt_ms = 1000 * (r.currentRoundTripTime || 0);
      }
    });
    return out;
  };

  let pc = null;
  let dc = null;
  let mic = null;
  let audioCtx = null;
  let micAn = null;
  let remoteAn = null;
  let meterTimer = null;
  let retryTimer = null;
  let dropTimer = null;
  let attempts = 0;
  let wantConnected = false;
  let micLoudSince = null;
  let micSpeaking = false;
  let remotePlaying = false;
  let pendingBarge = null;
  let pendingHeard = null;
  const rows = {};
  const lines = {};

  // -- API key: #key=… in the URL (kept out of server logs), else asked for on a 401 ---------
  if (location.hash.startsWith("#key=")) {
    localStorage.setItem("duplex.apiKey", decodeURIComponent(location.hash.slice(5)));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const apiKey = () => localStorage.getItem("duplex.apiKey") || "";
  const auth = () => (apiKey() ? { Authorization: "Bearer " + apiKey() } : {});

  // -- UI helpers ------------------------------------------------------------------------------
  function setConn(conn, text) {
    D.conn = conn;
    const el = $("conn");
    el.dataset.conn = conn;
    el.textContent = text || { idle: "not connected", connecting: "connecting…",
      connected: "connected", dropped: "connection lost" }[conn] || conn;
    const inCall = conn === "connecting" || conn === "connected";
    const btn = $("talk");
    btn.textContent = inCall || (conn === "dropped" && wantConnected) ? "Hang up" : "Start talking";
    btn.setAttribute("aria-pressed", String(wantConnected));
    $("model").disabled = $("voice").disabled = wantConnected;
    $("text").disabled = $("send").disabled = conn !== "connected";
  }

  function setState(state) {
    D.state = state;
    const el = $("state");
    el.dataset.state = state;
    el.textContent = state.replace("_", " ");
  }

  function showNotice(text, { retry = false, level = "error" } = {}) {
    D.lastNotice = text;
    $("notice-text").textContent = text;
    $("notice").dataset.level = level;
    $("notice").hidden = false;
    $("retry").hidden = !retry;
  }

  function hideNotice() {
    $("notice").hidden = true;
  }

  function turnLine(turn) {
    if (!lines[turn]) {
      const li = document.createElement("li");
      li.className = "turn";
      li.dataset.turn = turn;
      const you = document.createElement("p");
      you.className = "you";
      const bot = document.createElement("p");
      bot.className = "bot";
      li.append(you, bot);
      $("conversation").append(li);
      lines[turn] = { li, you, bot, clauses: [] };
    }
    return lines[turn];
  }

  const fmt = (v) => (v === null || v === undefined ? "–" : Math.round(v).toString());

  function figures(turn, patch) {
    const f = (D.turns[turn] = Object.assign(D.turns[turn] || { turn }, patch));
    if (!rows[turn]) {
      const tr = document.createElement("tr");
      tr.dataset.turn = turn;
      tr.innerHTML = "<td></td><td></td><td></td><td></td><td></td><td></td>";
      $("figures").tBodies[0].append(tr);
      rows[turn] = tr;
    }
    const cells = rows[turn].children;
    cells[0].textContent = turn;
    cells[1].textContent = fmt(f.total_ms);
    cells[2].textContent = fmt(f.heard_after_ms);
    cells[3].textContent = fmt(f.tts_first_audio_ms);
    cells[4].textContent = fmt(f.bargein_stop_ms);
    cells[5].textContent = fmt(f.flush_to_silent_ms);
  }

  // -- models and voices -------------------------------------------------------------------------
  let models = [];
  async function loadModels() {
    try {
      const r = await fetch("models", { headers: auth() });
      if (!r.ok) return;
      const data = await r.json();
      models = data.models || [];
      const sel = $("model");
      sel.replaceChildren(new Option("default" + (data.default ? ` (${data.default})` : ""), ""));
      for (const m of models) {
        const label = m.id + (m.resident ? "" : " (loads on first use)") +
          (m.available ? "" : " (unavailable)");
        const opt = new Option(label, m.id);
        opt.disabled = !m.available;
        opt.title = m.description || m.unavailable_reason || "";
        sel.append(opt);
      }
      const saved = localStorage.getItem("duplex.model");
      if (saved && models.some((m) => m.id === saved && m.available)) sel.value = saved;
      fillVoices();
    } catch (e) {
      /* the picker keeps "default" */
    }
  }

  function fillVoices() {
    const m = models.find((x) => x.id === $("model").value);
    const sel = $("voice");
    sel.replaceChildren(new Option("default" + (m && m.default_voice ? ` (${m.default_voice})` : ""), ""));
    for (const v of (m && m.voices) || []) sel.append(new Option(v, v));
    const saved = localStorage.getItem("duplex.voice");
    if (saved && [...sel.options].some((o) => o.value === saved)) sel.value = saved;
  }

  // -- audio levels: mic (after the browser's echo cancellation) and the reply -------------------
  function analyser(stream) {
    const an = audioCtx.createAnalyser();
    an.fftSize = 512;
    audioCtx.createMediaStreamSource(stream).connect(an); // analysed, not played through here
    return { an, buf: new Float32Array(an.fftSize) };
  }

  function levelDb(a) {
    a.an.getFloatTimeDomainData(a.buf);
    let sum = 0;
    for (const x of a.buf) sum += x * x;
    const rms = Math.sqrt(sum / a.buf.length);
    return rms > 1e-6 ? 20 * Math.log10(rms) : -120;
  }

  function tick() {
    const now = performance.now();
    D.trace.push([Math.round(now), Math.round(D.micDb), Math.round(D.remoteDb)]);
    if (D.trace.length > 1500) D.trace.splice(0, 100);
    if (micAn) {
      D.micDb = levelDb(micAn);
      $("mic-level").value = Math.max(-90, D.micDb);
      if (D.micDb > MIC_SPEECH_DB) {
        if (micLoudSince === null) micLoudSince = now;
        D.micLastLoud = now;
        if (!micSpeaking && now - micLoudSince >= MIC_ONSET_MS) {
          micSpeaking = true;
          D.micOnsetAt = micLoudSince;
        }
      } else {
        micLoudSince = null;
        if (micSpeaking && now - D.micLastLoud > MIC_OFFSET_MS) {
          micSpeaking = false;
          D.micOffsetAt = D.micLastLoud;
        }
      }
    }
    if (remoteAn) {
      D.remoteDb = levelDb(remoteAn);
      $("out-level").value = Math.max(-90, D.remoteDb);
      if (D.remoteDb > SILENCE_DB) {
        if (remotePlaying) D.remoteHeardMs += now - (D.remoteLastLoud || now);
        D.remoteLastLoud = now;
        if (pendingBarge) pendingBarge.last_loud = now;
        if (!remotePlaying) {
          remotePlaying = true;
          onReplyAudible(now);
        }
      } else if (remotePlaying && now - D.remoteLastLoud > STOP_HOLD_MS) {
        remotePlaying = false;
      }
    }
    if (pendingBarge && now - Math.max(pendingBarge.flush_at, pendingBarge.last_loud) > BARGE_SETTLE_MS) {
      settleBarge();
    }
  }

  function onReplyAudible(now) {
    D.remoteOnsets.push(now);
    if (pendingHeard && pendingHeard.micOffsetAt !== null) {
      figures(pendingHeard.turn, { heard_after_ms: now - pendingHeard.micOffsetAt });
    }
    pendingHeard = null;
  }

  // A barge-in's stop time: the last reply audio that reached the page after the flush (what
  // was already in the browser's jitter buffer included), decided once the reply has been
  // silent for BARGE_SETTLE_MS or the next reply (or a resume) starts.
  function settleBarge() {
    const b = pendingBarge;
    if (!b) return;
    pendingBarge = null;
    const stoppedAt = b.last_loud;
    delete b.last_loud;
    b.stopped_at = stoppedAt;
    // the reply was already quiet (between words) when you started: nothing more was heard
    b.paused = b.mic_onset_at !== null && stoppedAt <= b.mic_onset_at;
    b.flush_to_silent_ms = Math.max(0, stoppedAt - b.flush_at);
    b.speech_to_silent_ms = b.mic_onset_at === null ? null : Math.max(0, stoppedAt - b.mic_onset_at);
    D.bargeins.push(b);
    figures(b.turn, { bargein_stop_ms: b.speech_to_silent_ms, flush_to_silent_ms: b.flush_to_silent_ms });
  }

  // -- protocol events ---------------------------------------------------------------------------
  function onEvent(ev) {
    ev.t_page = performance.now();
    D.events.push(ev);
    if (D.events.length > 5000) D.events.splice(0, 1000);
    switch (ev.type) {
      case "ready":
        D.sessionId = ev.session_id;
        D.model = ev.model;
        setConn("connected", `connected · ${ev.model}`);
        break;
      case "state":
        if (ev.state === "speaking") {
          settleBarge(); // what came before this belongs to the interrupted reply
          $("remote").muted = false; // a new reply, or a resume
        }
        setState(ev.state);
        break;
      case "transcript":
        if (!ev.final) {
          $("partial").textContent = ev.text;
          $("partial").classList.add("partial");
        } else {
          $("partial").textContent = ev.text;
          $("partial").classList.remove("partial");
          turnLine(ev.turn).you.textContent = ev.text;
          // the turn may end before this page's own MIC_OFFSET_MS hold has passed (Smart Turn
          // ends it at 250 ms of silence): then the mic's last loud moment is where you stopped
          const offsetAt = micSpeaking ? D.micLastLoud : D.micOffsetAt;
          pendingHeard = { turn: ev.turn, micOffsetAt: offsetAt };
        }
        break;
      case "reply": {
        const line = turnLine(ev.turn);
        if (!ev.final) {
          line.clauses.push(ev.text);
          line.bot.textContent = line.clauses.join(" ");
          $("reply").textContent = ev.text;
        } else if (ev.text) {
          line.bot.textContent = ev.text; // what you actually heard
        }
        break;
      }
      case "latency":
        figures(ev.turn, { total_ms: ev.total_ms, tts_first_audio_ms: ev.tts_first_audio_ms,
          end_of_speech_ms: ev.end_of_speech_ms, asr_decode_ms: ev.asr_decode_ms });
        break;
      case "flush": {
        // "drop everything queued for playout now": the browser's jitter buffer can't be
        // emptied, so silence its output until the next reply (or a resume) starts speaking
        $("remote").muted = true;
        const now = performance.now();
        const onset = D.micOnsetAt !== null && now - D.micOnsetAt < 3000 ? D.micOnsetAt : null;
        settleBarge();
        pendingBarge = { turn: ev.turn, flush_at: now, mic_onset_at: onset,
          last_loud: Math.min(now, D.remoteLastLoud || now) };
        break;
      }
      case "bargein":
        figures(ev.turn, { server_bargein: ev });
        break;
      case "interrupted":
        turnLine(ev.turn).li.classList.add("interrupted");
        break;
      case "turn":
        if (ev.interrupted) turnLine(ev.turn).li.classList.add("interrupted");
        if (ev.reply_text) turnLine(ev.turn).bot.textContent = ev.reply_text;
        break;
      case "error":
        if (ev.fatal) {
          endCall();
          const idle = ev.code === "idle_timeout";
          showNotice(idle ? `The session ended: ${ev.message}. Press Start talking to begin again.`
            : `The orchestrator ended the session: ${ev.message}`, { level: idle ? "info" : "error" });
        } else {
          showNotice(ev.message, { level: "warn" });
          setTimeout(() => { if (D.lastNotice === ev.message) hideNotice(); }, 6000);
        }
        break;
      default:
        break;
    }
  }

  // -- the call --------------------------------------------------------------------------------
  async function start() {
    wantConnected = true;
    attempts = 0;
    hideNotice();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      wantConnected = false;
      setConn("idle");
      showNotice("The microphone needs a secure page: open this over https:// or as " +
        "http://localhost (on a phone: through an HTTPS proxy or an SSH tunnel).");
      return;
    }
    setConn("connecting", "asking for the microphone…");
    try {
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      });
    } catch (e) {
      wantConnected = false;
      setConn("idle");
      if (e.name === "NotAllowedError" || e.name === "SecurityError") {
        showNotice("Microphone access was denied. Allow the microphone for this page " +
          "(the icon in the address bar or the site settings), then press Start talking again.");
      } else if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
        showNotice("No microphone was found on this device.");
      } else if (e.name === "NotReadableError") {
        showNotice("The microphone is busy in another application.");
      } else {
        showNotice(`Could not open the microphone: ${e.message || e.name}`);
      }
      return;
    }
    audioCtx = audioCtx || new AudioContext();
    await audioCtx.resume();
    micAn = analyser(mic);
    if (!meterTimer) meterTimer = setInterval(tick, 10);
    await connect();
  }

  function parseIceLinks(header) {
    const servers = [];
    for (const part of (header || "").split(/,(?=\s*<)/)) {
      const m = part.match(/<([^>]+)>/);
      if (!m || !/rel="?ice-server"?/.test(part)) continue;
      const server = { urls: m[1] };
      const user = part.match(/username="([^"]*)"/);
      const cred = part.match(/credential="([^"]*)"/);
      if (user) server.username = user[1];
      if (cred) server.credential = cred[1];
      servers.push(server);
    }
    return servers;
  }

  function waitIceGathering(peer, timeoutMs) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
      peer.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, timeoutMs); // non-trickle WHIP: send what we have by then
    });
  }

  async function connect() {
    clearTimeout(retryTimer);
    if (!wantConnected) return;
    setConn("connecting");
    let opts;
    try {
      opts = await fetch("whip", { method: "OPTIONS", headers: auth() });
    } catch (e) {
      return dropped("The orchestrator is not reachable.");
    }
    if (opts.status === 401) return needKey(await opts.text());
    if (opts.status === 501) return fatal(`WebRTC is not available here: ${await opts.text()}`);
    if (!opts.ok) return dropped(`The orchestrator answered ${opts.status}.`);

    const peer = (pc = new RTCPeerConnection({ iceServers: parseIceLinks(opts.headers.get("Link")) }));
    for (const track of mic.getAudioTracks()) peer.addTrack(track, mic);
    const channel = (dc = peer.createDataChannel("events", { ordered: true }));
    channel.onmessage = (m) => { if (peer === pc) onEvent(JSON.parse(m.data)); };
    channel.onclose = () => { if (peer === pc && wantConnected) dropped("The connection closed."); };
    peer.ontrack = (ev) => {
      const stream = ev.streams[0] || new MediaStream([ev.track]);
      const audio = $("remote");
      audio.srcObject = stream; // needed: Chrome feeds a remote stream to Web Audio only if played
      audio.play().catch(() => {});
      remoteAn = analyser(stream);
    };
    peer.onconnectionstatechange = () => {
      if (peer !== pc) return;
      const s = peer.connectionState;
      if (s === "connected") {
        attempts = 0;
        clearTimeout(dropTimer);
        hideNotice();
      } else if (s === "failed") {
        dropped("The connection failed.");
      } else if (s === "disconnected") {
        clearTimeout(dropTimer);
        dropTimer = setTimeout(() => {
          if (peer === pc && peer.connectionState !== "connected") dropped("The connection dropped.");
        }, 4000);
      }
    };
    await peer.setLocalDescription(await peer.createOffer());
    await waitIceGathering(peer, 2000);
    const query = new URLSearchParams();
    if ($("model").value) query.set("model", $("model").value);
    if ($("voice").value) query.set("voice", $("voice").value);
    let resp;
    try {
      const qs = query.toString();
      resp = await fetch("whip" + (qs ? "?" + qs : ""), {
        method: "POST",
        headers: { "Content-Type": "application/sdp", ...auth() },
        body: peer.localDescription.sdp,
      });
    } catch (e) {
      return dropped("The orchestrator is not reachable.");
    }
    if (peer !== pc) return;
    const body = await resp.text();
    if (resp.status === 401) return needKey(body);
    if (resp.status === 503) return dropped(`The orchestrator cannot take the call now: ${body.trim()}`);
    if (resp.status !== 201) return fatal(`The orchestrator refused the call (${resp.status}): ${body.trim()}`);
    D.resource = new URL(resp.headers.get("Location"), location.href).href;
    await peer.setRemoteDescription({ type: "answer", sdp: body });
  }

  function teardown({ notifyServer = true } = {}) {
    clearTimeout(dropTimer);
    if (notifyServer && D.resource) {
      fetch(D.resource, { method: "DELETE", headers: auth(), keepalive: true }).catch(() => {});
    }
    D.resource = null;
    if (dc) { dc.onclose = null; dc.onmessage = null; try { dc.close(); } catch (e) { /* closed */ } }
    if (pc) { pc.onconnectionstatechange = null; pc.ontrack = null; pc.close(); }
    dc = pc = null;
    remoteAn = null;
    remotePlaying = false;
    pendingBarge = null;
    $("remote").srcObject = null;
    $("remote").muted = false;
    setState("idle");
  }

  function dropped(message) {
    teardown();
    if (!wantConnected) return;
    attempts += 1;
    if (attempts > MAX_RETRIES) {
      setConn("dropped");
      showNotice(`${message} Gave up after ${MAX_RETRIES} tries.`, { retry: true });
      return;
    }
    const delay = Math.min(1000 * 2 ** (attempts - 1), 15000);
    setConn("dropped");
    showNotice(`${message} Reconnecting in ${Math.round(delay / 1000)} s…`, { retry: true, level: "warn" });
    D.reconnects += 1;
    retryTimer = setTimeout(connect, delay);
  }

  function fatal(message) {
    endCall();
    showNotice(message);
  }

  function needKey(message) {
    endCall();
    $("keyform").hidden = false;
    $("apikey").focus();
    showNotice(`This orchestrator needs an API key: ${message.trim()}`);
  }

  function endCall() {
    wantConnected = false;
    clearTimeout(retryTimer);
    teardown();
    if (mic) mic.getTracks().forEach((t) => t.stop());
    mic = null;
    micAn = null;
    setConn("idle");
  }

  // -- wiring --------------------------------------------------------------------------------
  $("talk").addEventListener("click", () => {
    if (wantConnected) {
      endCall();
      hideNotice();
    } else {
      start();
    }
  });
  $("retry").addEventListener("click", () => {
    attempts = 0;
    hideNotice();
    if (!wantConnected) start();
    else connect();
  });
  $("model").addEventListener("change", () => {
    localStorage.setItem("duplex.model", $("model").value);
    fillVoices();
  });
  $("voice").addEventListener("change", () => localStorage.setItem("duplex.voice", $("voice").value));
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem("duplex.apiKey", $("apikey").value.trim());
    $("keyform").hidden = true;
    hideNotice();
    start();
  });
  $("textform").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (!text || !dc || dc.readyState !== "open") return;
    dc.send(JSON.stringify({ type: "text", text }));
    $("text").value = "";
  });
  window.addEventListener("pagehide", () => {
    if (D.resource) fetch(D.resource, { method: "DELETE", headers: auth(), keepalive: true });
  });

  setConn("idle");
  setState("idle");
  loadModels();
})();
