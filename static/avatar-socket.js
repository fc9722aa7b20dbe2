// A session over one WebSocket (the server's rtc_server/outputs/websocket.py), for pages that
// paint or draw the avatar themselves: static/ws.html (face regions) and static/visemes.html
// (a face drawn from mouth cues). No dependencies, no build step.
//
// Each tick's audio (or, in a viseme session, each chunk of voice sent ahead) is scheduled with
// WebAudio at its media time (plus a small lead for network jitter), so `mediaTimeHeard()` is what
// the user hears now; a page shows each picture, or mouth shape, when that media time comes. The
// ticks alone set the clock: they leave the server when their media time is played there. The microphone goes up as 16 kHz int16 PCM. The socket
// reconnects by itself; a session that is gone is replaced by a new one.
"use strict";

const KIND_TICK = 1;   // TICK_HEADER in tracks/face_stream.py
const KIND_VOICE = 2;  // VOICE_HEADER: a viseme session's voice, one chunk ahead of playback
const MIC_RATE = 16000;

export class AvatarSocket {
  /**
   * options: sessionId/token (join), or session: {mode, avatar, listen, visemes} (make one with
   * POST /sessions); key (the server's API key); lead (s); onEvent(event), onTick(tick) callbacks.
   */
  constructor(options = {}) {
    this.options = options;
    this.sessionId = options.sessionId || null;
    this.token = options.token || null;
    this.lead = options.lead ?? 0.15;
    this.state = "starting";
    this.events = [];
    this.ticks = 0;
    this.voiceChunks = 0;
    this.bytes = 0;
    this.reconnects = 0;
    this.micSent = 0;
    this.beeps = [];          // audio-clock times loud sound began (sync-test measurements)
    this.hello = null;
    this.ws = null;
    this.audio = null;
    this.base = null;         // audio-clock time of media time 0
    this.sources = [];
    this.pendingVoice = [];   // voice that came before the first tick set the clock
    this.backoff = 500;
    this.loud = false;
    this.loudness = [];       // [audio-clock time heard, RMS] per animation frame, while sound plays
  }

  get listening() { return this.options.session?.listen !== false; }

  async start() {
    this.connect();
    if (this.listening) this.startMic().catch((err) => { this.micError = err.message; });
    const watch = () => { this.watchLoudness(); requestAnimationFrame(watch); };
    requestAnimationFrame(watch);
  }

  audioContext() {
    if (!this.audio) {
      this.audio = new AudioContext({ latencyHint: "interactive" });
      this.analyser = this.audio.createAnalyser();
      this.analyser.fftSize = 1024;
      this.analyser.connect(this.audio.destination);
      this.wave = new Float32Array(this.analyser.fftSize);
    }
    if (this.audio.state === "suspended") this.audio.resume();
    return this.audio;
  }

  /** The media time (s) whose sound leaves the speakers now; null before the first tick. */
  mediaTimeHeard() {
    if (!this.audio || this.base === null) return null;
    return this.audio.currentTime - (this.audio.outputLatency || 0) - this.base;
  }

  /** Audio-clock time at which media time `t` is heard. */
  heardAt(t) { return this.base + t + (this.audio.outputLatency || 0); }

  async makeSession() {
    const headers = { "Content-Type": "application/json" };
    if (this.options.key) headers["X-API-Key"] = this.options.key;
    const resp = await fetch("/sessions", { method: "POST", headers, body: JSON.stringify(this.options.session || {}) });
    const answer = await resp.json();
    if (!resp.ok) throw new Error(answer.error || `HTTP ${resp.status}`);
    this.sessionId = answer.session_id;
    this.token = answer.token;
  }

  setState(state, detail) {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  async connect() {
    try {
      if (!this.sessionId) await this.makeSession();
    } catch (e) {
      this.setState("error", `could not start a session: ${e.message}`);
      return this.retry();
    }
    this.setState("connecting");
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}` +
                `/sessions/${this.sessionId}/ws?token=${encodeURIComponent(this.token)}`;
    const ws = this.ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => { opened = true; this.backoff = 500; };
    ws.onmessage = (m) => typeof m.data === "string" ? this.onText(JSON.parse(m.data)) : this.onBinary(m.data);
    ws.onclose = () => {
      this.ws = null;
      if (!opened) this.sessionId = null;  // refused (the session ended, the server restarted): a new one
      this.retry();
    };
  }

  retry() {
    this.setState("reconnecting");
    this.reconnects += 1;
    this.base = null;
    this.pendingVoice = [];
    setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, 8000);
  }

  onText(event) {
    // (with the audio clock at arrival: cues must come before their media time is heard)
    this.events.push({ ...event, at: performance.now(), clock: this.audio ? this.audio.currentTime : null });
    if (event.type === "hello") {
      this.hello = event;
      this.base = null;
      this.audioContext();
      this.setState("live");
    } else if (event.type === "state") {
      this.setState(event.state);
    } else if (event.type === "speech_end" && event.interrupted) {
      this.silenceAhead();
    }
    this.options.onEvent?.(event);
  }

  silenceAhead() {
    // What was already scheduled of an interrupted answer must not play on.
    for (const s of this.sources) { try { s.stop(); } catch (e) { /* already ended */ } }
    this.sources = [];
    this.pendingVoice = [];
  }

  /** Play int16 `pcm` (copied out of the message) at media time `mediaTime`. */
  play(pcm, rate, mediaTime) {
    const ctx = this.audioContext();
    const out = ctx.createBuffer(1, pcm.length, rate);
    const data = out.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
    const src = ctx.createBufferSource();
    src.buffer = out;
    src.connect(this.analyser);
    const when = this.base + mediaTime;
    // Late (a stalled socket): what should already have been heard is skipped, the rest stays in step.
    const late = Math.max(0, ctx.currentTime - when);
    if (late >= out.duration) return;
    src.start(when + late, late);
    this.sources.push(src);
    src.onended = () => { this.sources = this.sources.filter((s) => s !== src); };
  }

  onVoice(buffer, v) {
    const header = v.getUint16(2, true), mediaTime = v.getFloat64(4, true);
    const rate = v.getUint32(12, true), samples = v.getUint32(16, true), idBytes = v.getUint16(20, true);
    const voice = {
      utteranceId: new TextDecoder().decode(new Uint8Array(buffer, 22, idBytes)), mediaTime, rate,
      pcm: new Int16Array(buffer, header, samples),  // (the server puts the samples on an even byte)
    };
    this.voiceChunks += 1;
    if (this.base === null) this.pendingVoice.push(voice);
    else this.play(voice.pcm, rate, mediaTime);
    this.options.onVoice?.(voice);
  }

  onBinary(buffer) {
    if (!this.hello) return;
    this.bytes += buffer.byteLength;
    const v = new DataView(buffer);
    if (v.getUint8(0) === KIND_VOICE) return this.onVoice(buffer, v);
    if (v.getUint8(0) !== KIND_TICK) return;  // a kind this page does not know: skipped
    const header = v.getUint16(2, true);
    const tick = {
      flags: v.getUint8(1), full: (v.getUint8(1) & 1) !== 0, speech: (v.getUint8(1) & 2) !== 0,
      tick: v.getUint32(4, true), mediaTime: v.getFloat64(8, true),
      box: [v.getUint16(16, true), v.getUint16(18, true), v.getUint16(20, true), v.getUint16(22, true)],
    };
    const jpegBytes = v.getUint32(24, true), rate = v.getUint32(28, true), samples = v.getUint32(32, true);
    this.ticks += 1;
    const ctx = this.audioContext();
    if (this.base === null || this.base + tick.mediaTime < ctx.currentTime + 0.02) {
      this.base = ctx.currentTime + this.lead - tick.mediaTime;  // (re)anchor: first tick, or after a stall
      for (const voice of this.pendingVoice) this.play(voice.pcm, voice.rate, voice.mediaTime);
      this.pendingVoice = [];
    }
    if (samples) {
      const start = header + jpegBytes;  // may be odd (any JPEG length): copy out to align the samples
      this.play(new Int16Array(buffer.slice(start, start + samples * 2)), rate, tick.mediaTime);
    }
    tick.jpeg = tick.box[2] > 0 ? new Uint8Array(buffer, header, jpegBytes) : null;
    this.options.onTick?.(tick);
  }

  watchLoudness() {
    // When loud sound begins, as heard: the first loud sample in the analyser's window on the
    // audio clock, plus the output latency.
    if (!this.audio) return;
    this.analyser.getFloatTimeDomainData(this.wave);
    let sum = 0;
    for (let i = 0; i < this.wave.length; i++) sum += this.wave[i] * this.wave[i];
    if (sum > 0) {
      // RMS of the window that ends now, heard at its middle.
      const heard = this.audio.currentTime - this.wave.length / 2 / this.audio.sampleRate + (this.audio.outputLatency || 0);
      this.loudness.push([heard, Math.sqrt(sum / this.wave.length)]);
      if (this.loudness.length > 20000) this.loudness.splice(0, 10000);
    }
    let first = -1;
    for (let i = 0; i < this.wave.length; i++) if (Math.abs(this.wave[i]) > 0.2) { first = i; break; }
    if (first >= 0 && !this.loud) {
      this.beeps.push(this.audio.currentTime - (this.wave.length - first) / this.audio.sampleRate +
                      (this.audio.outputLatency || 0));
    }
    this.loud = first >= 0;
  }

  async startMic() {
    if (!navigator.mediaDevices) return;
    const ctx = this.audioContext();
    const stream = await navigator.mediaDevices.getUserMedia(
      { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
    const source = ctx.createMediaStreamSource(stream);
    const node = this.micNode = ctx.createScriptProcessor(1024, 1, 1);
    const step = ctx.sampleRate / MIC_RATE;
    node.onaudioprocess = (e) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      const input = e.inputBuffer.getChannelData(0);
      const n = Math.floor(input.length / step);
      const pcm = new Int16Array(n);
      for (let i = 0; i < n; i++) {
        let acc = 0;
        const a = Math.floor(i * step), b = Math.floor((i + 1) * step);
        for (let j = a; j < b; j++) acc += input[j];
        pcm[i] = Math.max(-1, Math.min(1, acc / (b - a))) * 32767;
      }
      this.ws.send(pcm.buffer);
      this.micSent += pcm.byteLength;
    };
    const mute = ctx.createGain();  // the processor must reach the destination to run; silently
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(ctx.destination);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }
  say(text) { this.send({ type: "say", text }); }
  chat(text) { this.send({ type: "chat", text }); }
  interrupt() { this.send({ type: "interrupt" }); }
}
