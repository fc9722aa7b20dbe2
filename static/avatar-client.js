// The talking avatar's JavaScript client: one ES module, no dependencies, no build step.
//
//   import { AvatarConnection } from "https://SERVER/static/avatar-client.js";
//   const avatar = new AvatarConnection({ video: document.querySelector("video") });
//   avatar.on("reply", (e) => console.log(e.text));
//   await avatar.connect();
//   avatar.chat("What can you do?");
//
// It connects like the server's own pages: ICE servers from GET /ice-servers, a WebRTC offer with
// the microphone (sendrecv) and the avatar's video (recvonly) and the `events` data channel,
// POST /offer. Events come as callbacks; when the connection is lost (network drop, server
// restart, the session closed by the server, a tab that slept) it connects again by itself with
// a growing pause (0.5, 1, 2, 4, 8 s), unless disconnect() was called.
"use strict";

const EVENT_TYPES = ["connection", "state", "transcript", "reply", "speech_start", "speech_end", "error",
                     "visemes", "output", "event", "track", "open"];

function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export class AvatarConnection {
  /**
   * options: server (base URL, default this page's origin), key (the server's API key), avatar,
   * voice, persona, bargeIn ("on" | "clear" | "off"), mode ("normal" | "sync-test"), visemes,
   * microphone (true: ask for it; false: listen only), relay (TURN only), video (a <video> to
   * play the avatar in), micStream (a MediaStream the page opened itself, instead of asking here),
   * reconnect (default true; false: a lost connection ends at "closed" and connect() throws
   * its error), maxBackoffMs (8000).
   * Events: the server's (state, transcript, reply, speech_start, speech_end, error, visemes,
   * output; "event" gets each), "connection" ({state, detail}), "track" (each RTCTrackEvent),
   * "open" (the data channel opened).
   */
  constructor(options = {}) {
    this.options = { microphone: true, reconnect: true, maxBackoffMs: 8000, ...options };
    this.server = (options.server || location.origin).replace(/\/$/, "");
    this.listeners = Object.fromEntries(EVENT_TYPES.map((t) => [t, []]));
    this.connection = "new";   // new | connecting | connected | reconnecting | closed
    this.state = "offline";    // the avatar's: idle | listening | thinking | speaking
    this.pc = null; this.dc = null; this.micStream = null; this.remoteStream = null;
    this.sessionId = null; this.token = null;
    this.reconnects = 0;
    this.wanted = false;       // connect() called and not disconnect()
    this.backoff = 500;
    this.retryTimer = null;
    this.muted = false;
    document.addEventListener("visibilitychange", () => {
      // A tab that slept may have lost its peer without noticing: check as soon as it is seen.
      if (document.visibilityState === "visible" && this.wanted && this.connection !== "connected") this.retryNow();
    });
    window.addEventListener("online", () => { if (this.wanted && this.connection !== "connected") this.retryNow(); });
  }

  /** Subscribe to an event type (see EVENT_TYPES); "event" gets every server event. */
  on(type, callback) {
    if (!this.listeners[type]) throw new Error(`unknown event type ${type}`);
    this.listeners[type].push(callback);
    return () => { this.listeners[type] = this.listeners[type].filter((c) => c !== callback); };
  }

  emit(type, payload) {
    for (const callback of this.listeners[type] || []) {
      try { callback(payload); } catch (e) { console.error(`avatar ${type} listener failed`, e); }
    }
  }

  setConnection(connection, detail) {
    if (this.connection === connection) return;
    this.connection = connection;
    this.emit("connection", { state: connection, detail });
  }

  headers(json) {
    const h = json ? { "Content-Type": "application/json" } : {};
    if (this.options.key) h["X-API-Key"] = this.options.key;
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async request(method, path, body) {
    const resp = await fetch(this.server + path, { method, headers: this.headers(body !== undefined),
                                                   body: body !== undefined ? JSON.stringify(body) : undefined });
    const answer = resp.headers.get("Content-Type")?.includes("json") ? await resp.json() : null;
    if (!resp.ok) throw new Error((answer && answer.error) || `HTTP ${resp.status}`);
    return answer;
  }

  /** Connect (and keep connecting after losses until disconnect()). */
  async connect() {
    this.wanted = true;
    clearTimeout(this.retryTimer);
    if (this.pc) return;
    this.setConnection(this.reconnects ? "reconnecting" : "connecting");
    try {
      await this.open();
      this.backoff = 500;
    } catch (err) {
      this.teardown();
      if (!this.options.reconnect) {
        this.wanted = false;
        this.setConnection("closed", String(err.message || err));
        throw err;
      }
      this.emit("error", { message: `could not connect: ${err.message || err}` });
      this.scheduleRetry();
    }
  }

  async open() {
    const ice = await this.request("GET", "/ice-servers").catch(() => ({ iceServers: [] }));
    const pc = this.pc = new RTCPeerConnection({ iceServers: ice.iceServers,
                                                 iceTransportPolicy: this.options.relay ? "relay" : "all" });
    if (this.options.micStream) this.micStream = this.options.micStream;
    if (this.options.microphone && !this.micStream && navigator.mediaDevices) {
      this.micStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } }).catch(() => null);
    }
    const mic = this.micStream && this.micStream.getAudioTracks()[0];
    if (mic) {
      mic.enabled = !this.muted;
      pc.addTransceiver(mic, { direction: "sendrecv", streams: [this.micStream] });
    } else {
      // sendrecv even without a microphone: a track can be put in later (replaceTrack) without a new offer.
      pc.addTransceiver("audio", { direction: "sendrecv" });
    }
    pc.addTransceiver("video", { direction: "recvonly" });
    const dc = this.dc = pc.createDataChannel("events");
    dc.onmessage = (m) => {
      let event;
      try { event = JSON.parse(m.data); } catch (e) { return; }
      this.onServerEvent(event);
    };
    dc.onopen = () => this.emit("open", {});
    dc.onclose = () => { if (this.pc === pc) this.lost("the server closed the session"); };
    pc.ontrack = (e) => {
      this.emit("track", e);
      this.remoteStream = e.streams[0] || new MediaStream([e.track]);
      const video = this.options.video;
      if (video && video.srcObject !== this.remoteStream) {
        video.srcObject = this.remoteStream;
        video.play().catch(() => {});
      }
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "connected") {
        this.setConnection("connected");
        if (this.reconnects) this.emit("event", { type: "reconnected", reconnects: this.reconnects });
      } else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        this.lost(`connection ${pc.connectionState}`);
      } else if (pc.connectionState === "disconnected") {
        // Often a short glitch: give ICE a few seconds before starting over.
        setTimeout(() => { if (this.pc === pc && pc.connectionState === "disconnected") this.lost("connection lost"); }, 3000);
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 5000);
    const body = { sdp: pc.localDescription.sdp, type: "offer" };
    for (const name of ["avatar", "voice", "mode", "visemes", "persona"]) {
      if (this.options[name] !== undefined && this.options[name] !== null) body[name] = this.options[name];
    }
    if (this.options.bargeIn) body.barge_in = this.options.bargeIn;
    this.token = null;
    const answer = await this.request("POST", "/offer", body);
    if (this.pc !== pc) return;  // disconnected meanwhile
    this.sessionId = answer.session_id;
    this.token = answer.token;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  }

  onServerEvent(event) {
    if (event.type === "state") this.state = event.state;
    this.emit("event", event);
    if (this.listeners[event.type]) this.emit(event.type, event);
  }

  lost(why) {
    if (!this.pc) return;
    this.teardown();
    if (this.wanted && this.options.reconnect) {
      this.emit("error", { message: `connection lost (${why}); connecting again` });
      this.scheduleRetry();
    } else {
      this.wanted = false;
      this.setConnection("closed", why);
    }
  }

  scheduleRetry() {
    if (!this.wanted || !this.options.reconnect) { this.setConnection("closed"); return; }
    this.reconnects += 1;
    this.setConnection("reconnecting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, this.options.maxBackoffMs);
    this.watchHealth();
  }

  watchHealth() {
    // While waiting out the backoff, ask the server (cheaply, once a second) whether it is ready:
    // a server that restarted and finished loading its models is used at once, not a backoff later.
    if (this.healthTimer) return;
    const poll = async () => {
      this.healthTimer = null;
      if (!this.wanted || this.pc || this.connection !== "reconnecting") return;
      const ready = await fetch(this.server + "/healthz", { cache: "no-store" }).then((r) => r.ok).catch(() => false);
      if (ready && this.wanted && !this.pc && this.connection === "reconnecting") this.retryNow();
      else this.healthTimer = setTimeout(poll, 1000);
    };
    this.healthTimer = setTimeout(poll, 1000);
  }

  retryNow() {
    clearTimeout(this.retryTimer);
    this.backoff = 500;
    if (!this.pc) this.connect();
  }

  teardown() {
    const pc = this.pc;
    this.pc = null;
    if (this.dc) { this.dc.onclose = null; this.dc.onmessage = null; }
    this.dc = null;
    this.state = "offline";
    if (pc) { pc.onconnectionstatechange = null; pc.close(); }
  }

  sendEvent(message) {
    if (this.dc && this.dc.readyState === "open") {
      this.dc.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  /** Speak `text` verbatim. */
  say(text) { return this.sendEvent({ type: "say", text }) || this.http("say", { text }); }
  /** A typed question, answered by the avatar. */
  chat(text) { return this.sendEvent({ type: "chat", text }) || this.http("chat", { text }); }
  /** Stop talking now. */
  interrupt() { return this.sendEvent({ type: "interrupt" }) || this.http("interrupt"); }

  http(route, body) {
    if (!this.sessionId) return Promise.reject(new Error("not connected"));
    return this.request("POST", `/sessions/${this.sessionId}/${route}`, body);
  }

  /** Mute or unmute the microphone (the connection stays). */
  mute(on = true) {
    this.muted = on;
    for (const track of this.micStream ? this.micStream.getAudioTracks() : []) track.enabled = !on;
  }

  /** Leave for good: the server's session ends now, no reconnection. */
  async disconnect() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    const { sessionId, token } = this;
    if (sessionId && token) {
      await fetch(`${this.server}/sessions/${sessionId}`, { method: "DELETE", headers: this.headers(false) })
        .catch(() => {});
    }
    this.teardown();
    this.sessionId = this.token = null;
    this.setConnection("closed");
  }
}
