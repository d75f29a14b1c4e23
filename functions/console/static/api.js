// The public HTTP API (API.md), and nothing else: every call carries the workspace token.

import { t } from "./i18n.js";

const TOKEN_KEY = "tunelab.token";
const signedOut = new Set();

export const session = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    localStorage.setItem(TOKEN_KEY, token);
  },
  signOut() {
    localStorage.removeItem(TOKEN_KEY);
    for (const listener of signedOut) listener();
  },
  /** Calls `listener` whenever the token is dropped (sign-out, or a 401). */
  onSignOut(listener) {
    signedOut.add(listener);
    return () => signedOut.delete(listener);
  },
};

/** The contract's error JSON as an exception; `fields` maps a field to its message. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || t("error.http", { status }));
    this.status = status;
    this.code = error.code || "http_error";
    this.details = Array.isArray(error.details) ? error.details : [];
  }

  /** Messages by field, with list indexes written one way: "tasks[0].name" → "tasks.0.name". */
  get fields() {
    const out = {};
    for (const detail of this.details) {
      if (!detail.field) continue;
      const field = detail.field.replace(/\[(\d+)\]/g, ".$1");
      const where = detail.line
        ? ` (${detail.file ? detail.file + ", " : ""}${t("field.line")} ${detail.line})`
        : "";
      out[field] = out[field] ? `${out[field]}; ${detail.message}${where}` : `${detail.message}${where}`;
    }
    return out;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.token}`, ...extra };
}

async function failure(response) {
  if (response.status === 401) {
    session.signOut();
    location.hash = "#/signin";
  }
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { error: { message: text.slice(0, 300) } };
  }
  return new ApiError(response.status, body);
}

/** The response to a request with the token (and a JSON body, if given); ApiError for
 * any status that is not 2xx. */
async function send(path, { method = "GET", json, signal, accept }) {
  const extra = accept ? { Accept: accept } : {};
  if (json !== undefined) extra["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers: headers(extra),
    body: json === undefined ? undefined : JSON.stringify(json),
    signal,
  });
  if (!response.ok) throw await failure(response);
  return response;
}

/** A JSON (or text) answer; ApiError for any status that is not 2xx. */
export async function api(path, options = {}) {
  const response = await send(path, options);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A file from the API, saved by the browser: a plain link cannot carry the token.
 * (The whole file passes through the page's memory: fine for adapters, heavy for a
 * full model of many GB.) */
export async function download(path, filename) {
  const response = await send(path, {});
  const url = URL.createObjectURL(await response.blob());
  Object.assign(document.createElement("a"), { href: url, download: filename }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A multipart upload, with progress: fetch cannot report how much of a body is sent. */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    request.setRequestHeader("Authorization", `Bearer ${session.token}`);
    request.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    request.onerror = () => reject(new ApiError(0, { error: { message: t("error.network") } }));
    request.onload = async () => {
      const response = new Response(request.responseText, {
        status: request.status,
        headers: { "content-type": request.getResponseHeader("content-type") || "" },
      });
      if (response.ok) resolve(await response.json());
      else reject(await failure(response));
    };
    request.send(form);
  });
}

function parseBlock(block) {
  let event = "message";
  let id;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? { event, id, data: data.join("\n") } : null;
}

/** Reads server-sent events with fetch (EventSource cannot send a token); resolves at
 * the end of the stream, rejects with ApiError when the server refuses it. */
export async function readEvents(path, options = {}, onEvent) {
  const response = await send(path, { ...options, accept: "text/event-stream" });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let match;
    while ((match = /\r?\n\r?\n/.exec(buffer))) {
      const message = parseBlock(buffer.slice(0, match.index));
      buffer = buffer.slice(match.index + match[0].length);
      if (message) onEvent(message);
    }
  }
}
