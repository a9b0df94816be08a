// Drives headless Chromium through the DevTools protocol over a pipe (no port to race
// for): opens a page, samples the attributes of one element every 250 ms, and takes a
// screenshot at the end. Prints one JSON object: {samples: [{t, attrs}], console: [...]}.
//
// node drive.mjs --url URL --seconds N [--selector qrelay-player] [--screenshot FILE]
//                [--flag CHROMIUM_FLAG]... [--before-load JS]
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const flags = args.flatMap((a, i) => (a === '--flag' ? [args[i + 1]] : []));
const url = opt('url');
const seconds = Number(opt('seconds', '10'));
const selector = opt('selector', 'qrelay-player');
const screenshot = opt('screenshot');
const chromium = opt('chromium', 'chromium');
// Script run in every document before its own (e.g. to take an API away).
const beforeLoad = opt('before-load');
if (!url) {
  console.error('--url is required');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'qrelay-chromium-'));
const browser = spawn(
  chromium,
  [
    '--headless=new',
    '--no-sandbox',
    '--remote-debugging-pipe',
    '--autoplay-policy=no-user-gesture-required',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
    '--window-size=1280,720',
    `--user-data-dir=${profile}`,
    ...flags,
    'about:blank',
  ],
  { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] },
);
let stderr = '';
browser.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
const toBrowser = browser.stdio[3];
const fromBrowser = browser.stdio[4];

let nextId = 1;
const pending = new Map();
const events = [];
let buffered = '';
fromBrowser.on('data', (chunk) => {
  buffered += chunk.toString('utf8');
  let end;
  while ((end = buffered.indexOf('\0')) >= 0) {
    const msg = JSON.parse(buffered.slice(0, end));
    buffered = buffered.slice(end + 1);
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(JSON.stringify(msg.error)));
      else resolve(msg.result);
    } else if (msg.method) {
      events.push(msg);
    }
  }
});

function send(method, params = {}, sessionId) {
  const id = nextId++;
  const msg = { id, method, params };
  if (sessionId) msg.sessionId = sessionId;
  toBrowser.write(JSON.stringify(msg) + '\0');
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const hardLimit = setTimeout(() => {
  console.error('drive.mjs: hard time limit reached');
  finish(3);
}, (seconds + 30) * 1000);

function finish(code) {
  clearTimeout(hardLimit);
  try {
    browser.kill('SIGKILL');
  } catch {}
  try {
    rmSync(profile, { recursive: true, force: true });
  } catch {}
  process.exit(code);
}

try {
  const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
  const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
  await send('Runtime.enable', {}, sessionId);
  await send('Page.enable', {}, sessionId);
  if (beforeLoad) await send('Page.addScriptToEvaluateOnNewDocument', { source: beforeLoad }, sessionId);
  await send('Page.navigate', { url }, sessionId);
  const samples = [];
  const started = Date.now();
  const expr = `(() => { const e = document.querySelector(${JSON.stringify(selector)});
    if (!e) return null; const o = {}; for (const a of e.attributes) o[a.name] = a.value;
    o.__now = performance.now(); return o; })()`;
  while (Date.now() - started < seconds * 1000) {
    await sleep(250);
    const r = await send('Runtime.evaluate', { expression: expr, returnByValue: true }, sessionId);
    samples.push({ t: Date.now() - started, attrs: r.result.value });
  }
  if (screenshot) {
    const shot = await send('Page.captureScreenshot', { format: 'png' }, sessionId);
    writeFileSync(screenshot, Buffer.from(shot.data, 'base64'));
  }
  const consoleLines = events
    .filter((e) => e.method === 'Runtime.consoleAPICalled' || e.method === 'Runtime.exceptionThrown')
    .map((e) =>
      e.method === 'Runtime.exceptionThrown'
        ? `exception: ${e.params.exceptionDetails.exception?.description || e.params.exceptionDetails.text}`
        : `${e.params.type}: ${e.params.args.map((a) => a.value ?? a.description ?? '').join(' ')}`,
    );
  process.stdout.write(JSON.stringify({ samples, console: consoleLines }) + '\n');
  finish(0);
} catch (e) {
  console.error(`drive.mjs: ${e.message}\nchromium stderr:\n${stderr}`);
  finish(1);
}
