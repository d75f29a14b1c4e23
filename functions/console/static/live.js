// One live stream of the workspace's events for the whole page; views subscribe to it.

import { useEffect, useRef, useState, useCallback } from "./vendor/preact-htm.js";
import { api, readEvents } from "./api.js";

const listeners = new Set();
let controller = null;
let lastId = null;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function startLive() {
  if (controller) return;
  controller = new AbortController();
  follow(controller.signal);
}

export function stopLive() {
  controller?.abort();
  controller = null;
  lastId = null;
}

async function follow(signal) {
  while (!signal.aborted) {
    const after = lastId ? `?after=${encodeURIComponent(lastId)}` : "";
    try {
      await readEvents(`/api/v1/events/stream${after}`, { signal }, (message) => {
        lastId = message.id || lastId;
        const event = JSON.parse(message.data);
        for (const listener of listeners) listener(event);
      });
    } catch (error) {
      if (signal.aborted || error.status === 401) return; // signed out: App stops us
      if (error.status === 404) lastId = null; // the cursor's event is gone: start afresh
    }
    await sleep(2000); // the stream ended or broke: pick up where it stopped
  }
}

/** Calls `handler(event)` for every live event while the component is mounted. */
export function useLive(handler) {
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => {
    const listener = (event) => latest.current(event);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }, []);
}

/** GET `path`, reloaded when a live event's type starts with one of `refreshOn`, and
 * every `pollMs` while `moving(data)` says the resource is still changing (a safety net
 * for events missed while the stream reconnects). */
export function useResource(path, { refreshOn = [], moving = () => false, pollMs = 5000 } = {}) {
  const [state, setState] = useState({ data: null, error: null });
  const pending = useRef(null);
  const latest = useRef(0);
  const load = useCallback(() => {
    // Reloads overlap (an event, the poll, a click): only the newest answer is shown.
    const request = ++latest.current;
    return api(path).then(
      (data) => request === latest.current && setState({ data, error: null }),
      (error) => request === latest.current && setState((old) => ({ data: old.data, error })),
    );
  }, [path]);
  useEffect(() => {
    setState({ data: null, error: null });
    load();
  }, [load]);
  useLive((event) => {
    if (pending.current || !refreshOn.some((prefix) => event.type.startsWith(prefix))) return;
    // Progress events come many a second; one reload per burst is enough.
    pending.current = setTimeout(() => {
      pending.current = null;
      load();
    }, 300);
  });
  const stillMoving = state.data !== null && moving(state.data);
  useEffect(() => {
    if (!stillMoving) return undefined;
    const timer = setInterval(load, pollMs);
    return () => clearInterval(timer);
  }, [stillMoving, load, pollMs]);
  useEffect(() => () => clearTimeout(pending.current), []);
  return { ...state, reload: load };
}
