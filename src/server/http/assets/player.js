// qrelay's browser player: <qrelay-player src="http://relay:1935/live/cam1.flv?token=...">
//
// An ES module with no build step and no dependency. It connects over WebTransport
// where the browser has it and the relay offers it (GET /webtransport.json on the same
// origin as `src`), else over HTTP-FLV (the `src` URL itself), and decodes with
// WebCodecs: H.264, HEVC, AV1 and VP9 video (E-RTMP), AAC and Opus audio. Video is drawn
// on a canvas, audio played through Web Audio, both on one clock: a small jitter buffer
// behind the newest frame received, which grows when frames come late and shrinks back
// when they stop. After a cancelled GOP, a decoder error or a stall, it resumes at the
// next keyframe.
//
// Attributes: `src` (an HTTP-FLV URL), `transport` (`auto`, `webtransport` or
// `http-flv`), `muted`, `nostats`. For tests and embedding, its stats are mirrored each
// second as attributes: data-transport, data-state (connecting, playing, stalled, ended,
// error), data-frames-decoded, data-frames-dropped, data-frames-received,
// data-latency-ms (relay ingest to display, from the relay's clock; also
// data-latency-p50-ms and -p99-ms over the last 3000 pictures), data-delay-ms (the
// jitter buffer), data-first-frame-ms (page time origin to the first picture),
// data-codec, data-error.

const KIND_AUDIO = 8;
const KIND_VIDEO = 9;
const KIND_DATA = 18;
/** Jitter buffer bounds (ms): where it starts and settles, and how far it may grow. */
const DELAY_TARGET = 100;
const DELAY_MAX = 3000;
/** Frames this far behind the clock when they arrive make the buffer grow. */
const LATE_SLACK = 10;
/** No picture for this long while playing is a stall. */
const STALL_MS = 1000;
/** Decoder backlog (frames) past which the player skips to the next keyframe. */
const MAX_DECODE_QUEUE = 90;
const RETRY_MS = 1500;

// ---------------------------------------------------------------------------------
// Wire formats
// ---------------------------------------------------------------------------------

function si24(b, i) {
  const v = (b[i] << 16) | (b[i + 1] << 8) | b[i + 2];
  return v & 0x800000 ? v - 0x1000000 : v;
}

function fourcc(b, i) {
  return String.fromCharCode(b[i], b[i + 1], b[i + 2], b[i + 3]);
}

/** FLV, incrementally: push() bytes, get tags {kind, ts, payload}. */
export class FlvDemuxer {
  constructor() {
    this.buf = new Uint8Array(0);
    this.headerDone = false;
  }

  push(chunk) {
    this.buf = this.buf.length ? concat(this.buf, chunk) : chunk;
    const tags = [];
    let i = 0;
    const b = this.buf;
    if (!this.headerDone) {
      if (b.length < 13) return tags;
      if (b[0] !== 0x46 || b[1] !== 0x4c || b[2] !== 0x56) throw new Error('not FLV');
      const headerSize = ((b[5] << 24) | (b[6] << 16) | (b[7] << 8) | b[8]) >>> 0;
      if (b.length < headerSize + 4) return tags;
      i = headerSize + 4;
      this.headerDone = true;
    }
    while (b.length - i >= 11) {
      const size = (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3];
      if (b.length - i < 11 + size + 4) break;
      const ts = ((b[i + 7] << 24) | (b[i + 4] << 16) | (b[i + 5] << 8) | b[i + 6]) >>> 0;
      tags.push({ kind: b[i] & 0x1f, ts, payload: b.subarray(i + 11, i + 11 + size) });
      i += 11 + size + 4;
    }
    this.buf = b.subarray(i);
    return tags;
  }
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** A video payload (legacy FLV or E-RTMP): codec, config or frame, keyframe, cts. */
export function parseVideo(p) {
  if (p.length < 5) return null;
  const b0 = p[0];
  if (b0 & 0x80) {
    // E-RTMP: [isEx|frameType(3)|packetType(4)][FourCC]...
    const frameType = (b0 >> 4) & 7;
    const packetType = b0 & 0x0f;
    const codec = fourcc(p, 1);
    if (frameType === 5) return null; // command frame
    if (packetType === 0) return { codec, config: true, data: p.subarray(5) };
    if (packetType === 1 && (codec === 'avc1' || codec === 'hvc1')) {
      if (p.length < 8) return null;
      return { codec, key: frameType === 1, cts: si24(p, 5), data: p.subarray(8) };
    }
    if (packetType === 1 || packetType === 3) return { codec, key: frameType === 1, cts: 0, data: p.subarray(5) };
    return null; // sequence end, metadata, multitrack: nothing to decode
  }
  const codecId = b0 & 0x0f;
  const codec = codecId === 7 ? 'avc1' : codecId === 12 ? 'hvc1' : null;
  if (!codec) return null;
  if (p[1] === 0) return { codec, config: true, data: p.subarray(5) };
  if (p[1] === 1) return { codec, key: b0 >> 4 === 1, cts: si24(p, 2), data: p.subarray(5) };
  return null;
}

/** An audio payload (legacy FLV AAC or E-RTMP): codec, config or frame. */
export function parseAudio(p) {
  if (p.length < 2) return null;
  const format = p[0] >> 4;
  if (format === 10) return { codec: 'aac', config: p[1] === 0, data: p.subarray(2) };
  if (format === 9 && p.length >= 5) {
    const packetType = p[0] & 0x0f;
    const cc = fourcc(p, 1);
    const codec = cc === 'Opus' ? 'opus' : cc === 'mp4a' ? 'aac' : cc;
    if (packetType === 0) return { codec, config: true, data: p.subarray(5) };
    if (packetType === 1) return { codec, config: false, data: p.subarray(5) };
  }
  return null;
}

const hex2 = (n) => n.toString(16).padStart(2, '0');
const dec2 = (n) => String(n).padStart(2, '0');

/** The WebCodecs codec string of a video configuration record. */
export function videoCodecString(codec, rec) {
  switch (codec) {
    case 'avc1':
      return `avc1.${hex2(rec[1])}${hex2(rec[2])}${hex2(rec[3])}`;
    case 'hvc1': {
      const space = ['', 'A', 'B', 'C'][rec[1] >> 6];
      const tier = (rec[1] >> 5) & 1 ? 'H' : 'L';
      const profile = rec[1] & 0x1f;
      let compat = ((rec[2] << 24) | (rec[3] << 16) | (rec[4] << 8) | rec[5]) >>> 0;
      let reversed = 0;
      for (let i = 0; i < 32; i++) {
        reversed = ((reversed << 1) | (compat & 1)) >>> 0;
        compat >>>= 1;
      }
      const constraints = Array.from(rec.subarray(6, 12));
      while (constraints.length && constraints[constraints.length - 1] === 0) constraints.pop();
      const tail = constraints.map((c) => '.' + c.toString(16)).join('');
      return `hvc1.${space}${profile}.${reversed.toString(16)}.${tier}${rec[12]}${tail}`;
    }
    case 'av01': {
      const profile = rec[1] >> 5;
      const level = rec[1] & 0x1f;
      const tier = rec[2] >> 7 ? 'H' : 'M';
      const depth = (rec[2] >> 5) & 1 ? 12 : (rec[2] >> 6) & 1 ? 10 : 8;
      return `av01.${profile}.${dec2(level)}${tier}.${dec2(depth)}`;
    }
    case 'vp09':
      return `vp09.${dec2(rec[4])}.${dec2(rec[5])}.${dec2(rec[6] >> 4)}`;
    default:
      return null;
  }
}

const AAC_RATES = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/** The AudioDecoder configuration of an audio configuration record. */
export function audioConfig(codec, rec) {
  if (codec === 'aac' && rec.length >= 2) {
    const aot = rec[0] >> 3;
    const rate = AAC_RATES[((rec[0] & 7) << 1) | (rec[1] >> 7)] || 44100;
    const channels = (rec[1] >> 3) & 0x0f || 2;
    return { codec: `mp4a.40.${aot}`, sampleRate: rate, numberOfChannels: channels, description: rec };
  }
  if (codec === 'opus' && rec.length >= 10) {
    return { codec: 'opus', sampleRate: 48000, numberOfChannels: rec[9], description: rec };
  }
  return null;
}

// ---------------------------------------------------------------------------------
// Transports: each yields frames {kind, ts, payload, relayMs} to onFrame.
// ---------------------------------------------------------------------------------

/** HTTP-FLV over fetch; resolves when the body ends. */
async function playFlv(url, signal, onFrame) {
  const response = await fetch(url, { signal, cache: 'no-store' });
  if (!response.ok) {
    const text = await response.text().catch(() => '');
    throw new PlayError(`HTTP ${response.status}: ${text}`, response.status);
  }
  // `{relay unix ms};{timestamp}`: the relay's clock for one timestamp.
  const clock = (response.headers.get('X-Qrelay-Clock') || '').split(';').map(Number);
  const relayMs = clock.length === 2 && clock.every(Number.isFinite) ? (ts) => clock[0] + (ts - clock[1]) : () => NaN;
  const demux = new FlvDemuxer();
  const reader = response.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    for (const tag of demux.push(value)) {
      onFrame({ kind: tag.kind, ts: tag.ts, payload: tag.payload, relayMs: relayMs(tag.ts) });
    }
  }
}

/** WebTransport: the relay's uni streams, each frames of
 * [u8 kind][u32 ts][u64 relay ms][u32 length][payload]. Resolves when the session ends. */
async function playWebTransport(url, hashes, signal, onFrame, onConnected) {
  const options = {};
  if (hashes.length) {
    options.serverCertificateHashes = hashes.map((h) => ({
      algorithm: 'sha-256',
      value: Uint8Array.from(atob(h), (c) => c.charCodeAt(0)),
    }));
  }
  const wt = new WebTransport(url, options);
  signal.addEventListener('abort', () => wt.close());
  await wt.ready;
  onConnected();
  const streams = wt.incomingUnidirectionalStreams.getReader();
  const readers = [];
  let order = 0;
  for (;;) {
    const { value, done } = await streams.read();
    if (done) break;
    readers.push(readFrames(value, order++, onFrame).catch(() => {}));
  }
  await Promise.all(readers);
  await wt.closed.catch(() => {});
}

async function readFrames(stream, order, onFrame) {
  const reader = stream.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf = buf.length ? concat(buf, value) : value;
    let i = 0;
    while (buf.length - i >= 17) {
      const v = new DataView(buf.buffer, buf.byteOffset + i);
      const len = v.getUint32(13);
      if (buf.length - i < 17 + len) break;
      const relayMs = Number(v.getBigUint64(5));
      onFrame({ kind: buf[i], ts: v.getUint32(1), relayMs, payload: buf.subarray(i + 17, i + 17 + len), stream: order });
      i += 17 + len;
    }
    buf = buf.subarray(i);
  }
}

class PlayError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// ---------------------------------------------------------------------------------
// The element
// ---------------------------------------------------------------------------------

class QrelayPlayer extends HTMLElement {
  static get observedAttributes() {
    return ['src'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>
      :host { display: block; position: relative; background: #000; aspect-ratio: 16 / 9; overflow: hidden; }
      canvas { width: 100%; height: 100%; object-fit: contain; display: block; }
      .stats { position: absolute; left: 6px; bottom: 6px; font: 11px/1.35 ui-monospace, monospace; color: #eee;
               background: rgba(0,0,0,.55); padding: 3px 6px; border-radius: 3px; white-space: pre; pointer-events: none; }
      :host([nostats]) .stats { display: none; }
      .unmute { position: absolute; right: 8px; top: 8px; font: 12px system-ui; padding: 4px 8px; cursor: pointer; }
    </style><canvas></canvas><div class="stats"></div><button class="unmute" hidden>🔈 Unmute</button>`;
    this.canvas = root.querySelector('canvas');
    this.ctx2d = this.canvas.getContext('2d');
    this.statsBox = root.querySelector('.stats');
    this.unmute = root.querySelector('.unmute');
    this.unmute.addEventListener('click', () => this.resumeAudio());
    this.frames = [];
    this.stats = { decoded: 0, dropped: 0, received: 0, latency: NaN, firstFrame: NaN, error: '' };
    /** Latencies of the last pictures shown (ms), for the percentiles. */
    this.latencies = [];
    this.state = 'connecting';
    this.transport = '';
  }

  connectedCallback() {
    this.running = true;
    this.timer = setInterval(() => this.tick(), 1000);
    this.raf = requestAnimationFrame(() => this.render());
    if (this.getAttribute('src')) this.start();
  }

  disconnectedCallback() {
    this.running = false;
    clearInterval(this.timer);
    cancelAnimationFrame(this.raf);
    this.stop();
  }

  attributeChangedCallback(name, old, value) {
    if (name === 'src' && this.running && old !== value) {
      this.stop();
      this.start();
    }
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.resetMedia();
    if (this.audioCtx) this.audioCtx.close().catch(() => {});
    this.audioCtx = null;
  }

  resetMedia() {
    for (const d of [this.video, this.audio]) {
      if (d && d.state !== 'closed') d.close();
    }
    this.video = this.audio = null;
    this.videoConfig = this.audioConfig = null;
    for (const f of this.frames || []) f.close();
    this.frames = [];
    this.needKey = true;
    this.offset = -Infinity;
    this.maxTs = -Infinity;
    this.delay = DELAY_TARGET;
    this.lastLate = 0;
    this.nextAudio = 0;
    this.gopStream = -1;
    this.relayTimes = new Map();
    this.lastShown = performance.now();
  }

  /** Connects, plays until the stream ends or fails, then tries again. */
  async start() {
    const abort = new AbortController();
    this.abort = abort;
    const src = new URL(this.getAttribute('src'), location.href);
    if (!window.isSecureContext || typeof VideoDecoder !== 'function') {
      // Browsers offer WebCodecs and WebTransport to secure contexts only: https://, or
      // http://localhost. A page over plain http from another machine cannot decode.
      const https = new URL(location.href);
      https.protocol = 'https:';
      this.transport = '';
      return this.fail(
        window.isSecureContext
          ? 'this browser has no WebCodecs (VideoDecoder)'
          : `not a secure context: open ${https.href} (the relay serves HTTPS on the same port)`,
      );
    }
    while (this.running && !abort.signal.aborted) {
      this.resetMedia();
      this.setState('connecting');
      try {
        await this.connect(src, abort.signal);
        this.setState('ended');
      } catch (e) {
        if (abort.signal.aborted) return;
        this.stats.error = String(e.message || e);
        this.setState(e.status === 404 ? 'ended' : 'error');
      }
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }

  async connect(src, signal) {
    const onFrame = (f) => this.onFrame(f);
    const want = this.getAttribute('transport') || 'auto';
    if (want !== 'http-flv' && typeof WebTransport === 'function') {
      const wt = await this.webTransportUrl(src, signal);
      if (wt) {
        let connected = false;
        try {
          this.transport = 'webtransport';
          await withTimeout(
            playWebTransport(wt.url, wt.hashes, signal, onFrame, () => (connected = true)),
            3000,
            () => connected,
          );
          return;
        } catch (e) {
          // A blocked UDP port or a refused session: HTTP-FLV next, unless asked not to.
          if (connected || want === 'webtransport' || signal.aborted) throw e;
          console.warn('qrelay-player: WebTransport failed, falling back to HTTP-FLV:', e);
          this.resetMedia();
        }
      }
    }
    this.transport = 'http-flv';
    await playFlv(src.href, signal, onFrame);
  }

  /** Where the relay serves WebTransport for `src`, or null. */
  async webTransportUrl(src, signal) {
    try {
      const r = await fetch(new URL('/webtransport.json', src), { signal, cache: 'no-store' });
      if (!r.ok) return null;
      const info = await r.json();
      const path = src.pathname.replace(/\.flv$/, '');
      const host = src.hostname.includes(':') ? `[${src.hostname}]` : src.hostname;
      return { url: `https://${host}:${info.port}${path}${src.search}`, hashes: info.certificate_hashes || [] };
    } catch {
      return null;
    }
  }

  // -- Media ----------------------------------------------------------------------

  onFrame(f) {
    if (f.kind === KIND_VIDEO) this.onVideo(f);
    else if (f.kind === KIND_AUDIO) this.onAudio(f);
    // KIND_DATA (metadata) needs nothing: the configuration records say it all.
  }

  /** Moves the clock's anchor forward to the least delayed frame, and grows the
   * jitter buffer when a frame comes later than the buffer allows. */
  arrived(ts) {
    const now = performance.now();
    // Only the newest frame so far can be late: older ones (a late joiner's cached
    // GOP, audio interleaved just behind video) were sent before it.
    if (ts <= this.maxTs) return;
    this.maxTs = ts;
    const late = this.clock(now) - ts;
    if (late > LATE_SLACK) {
      this.delay = Math.min(DELAY_MAX, this.delay + late);
      this.lastLate = now;
    }
    if (ts - now > this.offset) this.offset = ts - now;
  }

  /** The media time to show now: the newest arrival's timestamp less the buffer. */
  clock(now) {
    return now + this.offset - this.delay;
  }

  onVideo(f) {
    const v = parseVideo(f.payload);
    if (!v) return;
    if (v.config) return this.configureVideo(v);
    this.stats.received++;
    this.arrived(f.ts);
    // Over WebTransport each GOP has its stream: frames of a GOP older than the one
    // being decoded (a stream the relay cancelled, still draining) are stale.
    if (f.stream !== undefined) {
      if (v.key && f.stream >= this.gopStream) this.gopStream = f.stream;
      else if (f.stream < this.gopStream) return void this.stats.dropped++;
    }
    if (!this.video || this.video.state !== 'configured') return void this.stats.dropped++;
    if (this.video.decodeQueueSize > MAX_DECODE_QUEUE) this.needKey = true;
    if (this.needKey && !v.key) return void this.stats.dropped++;
    this.needKey = false;
    const pts = (f.ts + v.cts) * 1000;
    this.relayTimes.set(pts, f.relayMs);
    try {
      this.video.decode(new EncodedVideoChunk({ type: v.key ? 'key' : 'delta', timestamp: pts, data: v.data }));
    } catch (e) {
      this.decoderFailed('video', e);
    }
  }

  configureVideo(v) {
    const codec = videoCodecString(v.codec, v.data);
    if (!codec) return this.fail(`unsupported video codec ${v.codec}`);
    const config = { codec, optimizeForLatency: true };
    if (v.codec === 'avc1' || v.codec === 'hvc1' || v.codec === 'av01') config.description = v.data.slice();
    const key = codec + ':' + Array.from(v.data).join(',');
    if (this.videoConfig === key && this.video && this.video.state === 'configured') return;
    this.videoConfig = key;
    this.codec = codec;
    if (!this.video || this.video.state === 'closed') {
      this.video = new VideoDecoder({
        output: (frame) => this.onPicture(frame),
        error: (e) => this.decoderFailed('video', e),
      });
    }
    this.video.configure(config);
    this.needKey = true;
  }

  onPicture(frame) {
    this.stats.decoded++;
    this.frames.push(frame);
  }

  decoderFailed(which, e) {
    console.warn(`qrelay-player: ${which} decoder:`, e);
    // Configured again by the next configuration record; resumes at a keyframe.
    if (which === 'video') {
      if (this.video && this.video.state !== 'closed') this.video.close();
      this.video = null;
      this.videoConfig = null;
      this.needKey = true;
    } else {
      if (this.audio && this.audio.state !== 'closed') this.audio.close();
      this.audio = null;
      this.audioConfig = null;
    }
  }

  onAudio(f) {
    const a = parseAudio(f.payload);
    if (!a) return;
    if (a.config) return this.configureAudio(a);
    this.arrived(f.ts);
    if (!this.audio || this.audio.state !== 'configured' || !this.audioCtx) return;
    try {
      this.audio.decode(new EncodedAudioChunk({ type: 'key', timestamp: f.ts * 1000, data: a.data }));
    } catch (e) {
      this.decoderFailed('audio', e);
    }
  }

  configureAudio(a) {
    const config = audioConfig(a.codec, a.data);
    if (!config) return;
    const key = config.codec + ':' + Array.from(a.data).join(',');
    if (this.audioConfig === key && this.audio && this.audio.state === 'configured') return;
    this.audioConfig = key;
    config.description = a.data.slice();
    if (!this.audioCtx) {
      this.audioCtx = new AudioContext({ latencyHint: 'interactive' });
      this.gain = this.audioCtx.createGain();
      this.gain.connect(this.audioCtx.destination);
      this.gain.gain.value = this.hasAttribute('muted') ? 0 : 1;
    }
    if (!this.audio || this.audio.state === 'closed') {
      this.audio = new AudioDecoder({ output: (d) => this.onSamples(d), error: (e) => this.decoderFailed('audio', e) });
    }
    this.audio.configure(config);
  }

  /** Schedules decoded audio on the shared clock; contiguous blocks stay contiguous,
   * so a small drift never clicks; audio already late is dropped. */
  onSamples(data) {
    const ctx = this.audioCtx;
    if (!ctx || ctx.state !== 'running') {
      if (ctx && ctx.state === 'suspended') this.unmute.hidden = false;
      return data.close();
    }
    const buffer = ctx.createBuffer(data.numberOfChannels, data.numberOfFrames, data.sampleRate);
    for (let c = 0; c < data.numberOfChannels; c++) {
      const plane = new Float32Array(data.numberOfFrames);
      data.copyTo(plane, { planeIndex: c, format: 'f32-planar' });
      buffer.copyToChannel(plane, c);
    }
    const ahead = (data.timestamp / 1000 - this.clock(performance.now())) / 1000;
    data.close();
    let at = ctx.currentTime + ahead;
    if (Math.abs(at - this.nextAudio) < 0.04) at = this.nextAudio;
    if (at < ctx.currentTime) return;
    const node = ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(this.gain);
    node.start(at);
    this.nextAudio = at + buffer.duration;
  }

  resumeAudio() {
    this.removeAttribute('muted');
    if (this.gain) this.gain.gain.value = 1;
    if (this.audioCtx) this.audioCtx.resume().then(() => (this.unmute.hidden = true));
  }

  /** Each animation frame: show the newest picture due, drop those it passed. */
  render() {
    if (!this.running) return;
    this.raf = requestAnimationFrame(() => this.render());
    const now = performance.now();
    const due = this.clock(now) * 1000;
    let shown = null;
    while (this.frames.length && this.frames[0].timestamp <= due) {
      if (shown) {
        shown.close();
        this.stats.dropped++;
      }
      shown = this.frames.shift();
    }
    if (!shown) {
      if (this.state === 'playing' && now - this.lastShown > STALL_MS) this.setState('stalled');
      return;
    }
    if (this.canvas.width !== shown.displayWidth || this.canvas.height !== shown.displayHeight) {
      this.canvas.width = shown.displayWidth;
      this.canvas.height = shown.displayHeight;
    }
    this.ctx2d.drawImage(shown, 0, 0);
    const relayMs = this.relayTimes.get(shown.timestamp);
    this.relayTimes.delete(shown.timestamp);
    if (this.relayTimes.size > 1000) this.relayTimes.clear();
    if (Number.isFinite(relayMs)) {
      // The frame's presentation offset (pts past dts) is part of the buffer, not of
      // the network: latency counts from when the relay had the frame.
      this.stats.latency = Date.now() - relayMs;
      this.latencies.push(this.stats.latency);
      if (this.latencies.length > 3000) this.latencies.splice(0, this.latencies.length - 3000);
    }
    shown.close();
    this.lastShown = now;
    if (Number.isNaN(this.stats.firstFrame)) this.stats.firstFrame = now;
    if (this.state !== 'playing') this.setState('playing');
  }

  /** Each second: relax the jitter buffer and publish the stats. */
  tick() {
    const now = performance.now();
    if (now - this.lastLate > 3000 && this.delay > DELAY_TARGET) {
      this.delay = Math.max(DELAY_TARGET, this.delay - Math.max(10, (this.delay - DELAY_TARGET) / 4));
    }
    const s = this.stats;
    const attrs = {
      'data-transport': this.transport,
      'data-state': this.state,
      'data-frames-decoded': s.decoded,
      'data-frames-dropped': s.dropped,
      'data-frames-received': s.received,
      'data-latency-ms': Number.isFinite(s.latency) ? Math.round(s.latency) : '',
      'data-latency-p50-ms': percentile(this.latencies, 0.5),
      'data-latency-p99-ms': percentile(this.latencies, 0.99),
      'data-delay-ms': Math.round(this.delay),
      'data-first-frame-ms': Number.isFinite(s.firstFrame) ? Math.round(s.firstFrame) : '',
      'data-codec': this.codec || '',
      'data-error': s.error,
    };
    for (const [k, v] of Object.entries(attrs)) this.setAttribute(k, String(v));
    this.statsBox.textContent =
      `${this.transport || '-'} · ${this.state} · ${this.codec || ''} ${this.canvas.width}x${this.canvas.height}\n` +
      `decoded ${s.decoded} · dropped ${s.dropped} · latency ${attrs['data-latency-ms'] || '-'} ms · buffer ${attrs['data-delay-ms']} ms` +
      (s.error && this.state !== 'playing' ? `\n${s.error}` : '');
  }

  setState(state) {
    this.state = state;
    this.tick();
  }

  fail(message) {
    this.stats.error = message;
    this.setState('error');
  }
}

/** The `q` quantile of `values`, rounded; '' when there are none. */
function percentile(values, q) {
  if (!values.length) return '';
  const sorted = [...values].sort((a, b) => a - b);
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);
}

/** `promise`, or a timeout error after `ms` unless `settled()` says it got going. */
function withTimeout(promise, ms, settled) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      if (!settled()) reject(new Error(`no connection within ${ms} ms`));
    }, ms);
    promise.then(
      (v) => (clearTimeout(timer), resolve(v)),
      (e) => (clearTimeout(timer), reject(e)),
    );
  });
}

if (!customElements.get('qrelay-player')) customElements.define('qrelay-player', QrelayPlayer);
