// Comparison chat: one column per service, the same question to each, answers streamed
// side by side with time, tokens and tokens/s. Each column keeps its own context.

import { html, useState, useRef, useEffect } from "../vendor/preact-htm.js";
import { api, readEvents } from "../api.js";
import { t, formatNumber } from "../i18n.js";
import { Page, Field, go } from "../ui.js";
import { MAX_COMPARED } from "./services.js";

const SETTINGS = { system: "", temperature: "0", top_p: "1", max_tokens: "128", store: false };

/** A comparison's id: the answers of one round share it, so a vote can name the best. */
// (getRandomValues, not randomUUID: the latter exists only on https and localhost.)
const comparisonId = () => `cmp-${Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("")}`;

/** Asks one service with its own history; `update(patch)` changes its pending answer. */
async function ask(service, history, settings, comparison, update, signal) {
  const json = {
    services: [service],
    messages: history,
    temperature: Number(settings.temperature),
    top_p: Number(settings.top_p),
    max_tokens: Number(settings.max_tokens),
    stream: true,
    store: settings.store || undefined, // unticked: the service's own setting
    comparison_id: comparison,
  };
  if (settings.system.trim()) json.system = settings.system;
  let text = "";
  const patch = (change) => signal.aborted || update(change); // cleared meanwhile: drop it
  try {
    await readEvents("/api/v1/chat/compare", { method: "POST", json, signal }, (message) => {
      const body = JSON.parse(message.data);
      if (message.event === "delta") patch({ content: (text += body.text) });
      else if (message.event === "done") patch({ content: body.content, stats: body, pending: false });
      else if (message.event === "error") patch({ error: body.message || body.code, pending: false });
    });
  } catch (exc) {
    patch({ error: exc.message });
  }
  patch({ pending: false });
}

function Answer({ turn, onVote }) {
  const s = turn.stats;
  return html`<div class="message assistant${turn.best ? " best" : ""}" data-pending=${turn.pending ? "true" : "false"}>
    <div class="content" data-testid="answer">${turn.content}${turn.pending ? html`<span class="cursor">▍</span>` : null}</div>
    ${turn.error ? html`<div class="field-error" role="alert">${turn.error}</div>` : null}
    ${s ? html`<div class="stats muted" data-testid="answer-stats">
      ${t("chat.stats", {
        seconds: formatNumber(s.latency_ms / 1000, 2),
        tokens: s.usage?.completion_tokens ?? "—",
        rate: formatNumber(s.tokens_per_second, 1),
      })}</div>` : null}
    ${onVote ? html`<button type="button" class="link" data-testid="vote" aria-pressed=${turn.best ? "true" : "false"}
      onClick=${onVote}>${turn.best ? t("chat.voted") : t("chat.vote")}</button>` : null}
  </div>`;
}

export function CompareChat({ query }) {
  const services = (query.get("services") || "").split(",").filter(Boolean).slice(0, MAX_COMPARED);
  const [settings, setSettings] = useState(SETTINGS);
  const [question, setQuestion] = useState("");
  // Per service: [{role: "user", content} | {role: "assistant", content, stats, error, pending}]
  const [columns, setColumns] = useState(() => Object.fromEntries(services.map((s) => [s, []])));
  const controller = useRef(null);
  const [voteError, setVoteError] = useState(null);
  useEffect(() => () => controller.current?.abort(), []);

  const busy = Object.values(columns).some((turns) => turns.some((turn) => turn.pending));
  const set = (key) => (e) => setSettings({ ...settings, [key]: e.target.value });

  /** Sends `content` to every column on top of `base` (each column's prior turns). */
  function send(content, base) {
    controller.current = new AbortController();
    const comparison = comparisonId();
    const next = {};
    for (const service of services) {
      next[service] = [...base[service], { role: "user", content }, { role: "assistant", content: "", pending: true, comparison }];
    }
    setColumns(next);
    for (const service of services) {
      // Failed or empty answers are not context the model should see.
      const history = next[service]
        .slice(0, -1)
        .filter((turn) => turn.role === "user" || (turn.content && !turn.error))
        .map(({ role, content: c }) => ({ role, content: c }));
      const update = (patch) => setColumns((old) => {
        const turns = [...old[service]];
        turns[turns.length - 1] = { ...turns[turns.length - 1], ...patch };
        return { ...old, [service]: turns };
      });
      ask(service, history, settings, comparison, update, controller.current.signal);
    }
  }
  function submit(event) {
    event.preventDefault();
    if (!question.trim() || busy) return;
    send(question, columns);
    setQuestion("");
  }
  function regenerate() {
    const lastQuestion = columns[services[0]].filter((turn) => turn.role === "user").pop();
    if (!lastQuestion) return;
    const base = Object.fromEntries(services.map((s) => [s, columns[s].slice(0, -2)]));
    send(lastQuestion.content, base);
  }
  /** The last round's answers can be voted on once all are in and were stored. */
  const last = services.map((s) => columns[s][columns[s].length - 1]);
  const votable = services.length > 1 && !busy && last.every((turn) => turn?.stats?.chat_id);
  async function vote(best) {
    try {
      await api("/api/v1/chat/feedback", { method: "POST", json: { comparison_id: last[0].comparison, best } });
      setVoteError(null);
      setColumns((old) => Object.fromEntries(services.map((s) => {
        const turns = [...old[s]];
        turns[turns.length - 1] = { ...turns[turns.length - 1], best: s === best };
        return [s, turns];
      })));
    } catch (exc) {
      setVoteError(exc.message);
    }
  }
  function clear() {
    controller.current?.abort();
    setColumns(Object.fromEntries(services.map((s) => [s, []])));
  }
  if (!services.length) {
    go("#/services");
    return null;
  }
  return html`<${Page} title=${t("chat.title")}>
    <details class="settings" open>
      <summary>${t("chat.settings")}</summary>
      <div class="grid">
        <${Field} label=${t("chat.system")} wide><textarea name="system" rows="2" value=${settings.system} onInput=${set("system")}></textarea></${Field}>
        <${Field} label=${t("chat.temperature")}><input name="temperature" type="number" min="0" max="2" step="0.1" value=${settings.temperature} onInput=${set("temperature")} /></${Field}>
        <${Field} label=${t("chat.top_p")}><input name="top_p" type="number" min="0.01" max="1" step="0.05" value=${settings.top_p} onInput=${set("top_p")} /></${Field}>
        <${Field} label=${t("chat.max_tokens")}><input name="max_tokens" type="number" min="1" max="8192" value=${settings.max_tokens} onInput=${set("max_tokens")} /></${Field}>
        <${Field} label=${t("chat.store")} hint=${t("chat.store_hint")}><input name="store" type="checkbox" checked=${settings.store}
          onChange=${(e) => setSettings({ ...settings, store: e.target.checked })} /></${Field}>
      </div>
    </details>
    <div class="columns" style=${{ "--columns": services.length }}>
      ${services.map((service) => html`<section class="column" data-service=${service}>
        <h2>${service}</h2>
        <div class="conversation">
          ${columns[service].map((turn, i) => turn.role === "user"
            ? html`<div class="message user">${turn.content}</div>`
            : html`<${Answer} turn=${turn}
                onVote=${votable && i === columns[service].length - 1 ? () => vote(service) : null} />`)}
        </div>
      </section>`)}
    </div>
    ${voteError ? html`<div class="field-error" role="alert">${voteError}</div>` : null}
    <form class="ask" onSubmit=${submit}>
      <textarea name="question" rows="2" placeholder=${t("chat.placeholder")} value=${question}
        onInput=${(e) => setQuestion(e.target.value)}
        onKeyDown=${(e) => e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229 && submit(e)}></textarea>
      <div class="form-actions">
        <button type="submit" class="primary" disabled=${busy || !question.trim()}>${t("chat.send")}</button>
        <button type="button" onClick=${regenerate} disabled=${busy || !columns[services[0]].length}>${t("chat.regenerate")}</button>
        <button type="button" onClick=${clear}>${t("chat.clear")}</button>
      </div>
    </form>
  </${Page}>`;
}
