// Talking to the query API: JSON answers and the live event stream, both with
// the read key in the Authorization header. EventSource cannot send headers,
// so the stream is read with fetch and parsed here.

/** A failed request: `status` is the HTTP status, or 0 when Beacon could not be reached. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

const unreachable = () => new ApiError(0, 'Beacon cannot be reached');

async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === 'string') message = body.error;
  } catch {
    // Not JSON (a proxy's page, say): the status says enough.
  }
  return new ApiError(response.status, message);
}

/** GET `path` with `params` as the query string; the JSON answer, or an ApiError. */
export async function getJson(path, key, params = null, signal = undefined) {
  const url = params ? `${path}?${new URLSearchParams(params)}` : path;
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${key}` },
      cache: 'no-store',
      signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw unreachable();
  }
  if (!response.ok) throw await failure(response);
  try {
    return await response.json();
  } catch {
    throw unreachable();
  }
}

/**
 * A Server-Sent Events parser fed text in chunks of any size. `push` returns
 * the events completed by a chunk, each `{type, data, id}`, where `id` is the
 * last event id seen so far (what to send as Last-Event-ID).
 */
export class SseParser {
  constructor(lastId = '') {
    this.lastId = lastId;
    this.buffer = '';
    this.type = '';
    this.data = [];
  }

  push(chunk) {
    this.buffer += chunk;
    const out = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      // A CR at the end may be the first half of a CRLF split across chunks.
      if (c === '\r' && i + 1 === this.buffer.length) break;
      const line = this.buffer.slice(start, i);
      if (c === '\r' && this.buffer[i + 1] === '\n') i++;
      start = i + 1;
      this.line(line, out);
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  line(line, out) {
    if (line === '') {
      if (this.data.length > 0) {
        out.push({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastId });
      }
      this.type = '';
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.type = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.lastId = value;
  }
}

/**
 * Read the event stream at `path` until it ends, `signal` aborts or the
 * connection drops, calling `onEvent` for each event and `onOpen` once the
 * server has accepted. Throws an ApiError when the server refuses.
 */
export async function readStream(path, { key, lastEventId = '', signal, onOpen = () => {}, onEvent }) {
  const headers = { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' };
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  let response;
  try {
    response = await fetch(path, { headers, cache: 'no-store', signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw unreachable();
  }
  if (!response.ok) throw await failure(response);
  onOpen();
  const parser = new SseParser(lastEventId);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const event of parser.push(value)) onEvent(event);
    }
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    // The connection dropped: the caller reconnects from the last id.
  }
}
