// Model services: status while they deploy, delete, and up to three ticked for
// comparison chat (a fourth is refused here, as the API would refuse it).

import { html, useState, useEffect } from "../vendor/preact-htm.js";
import { api } from "../api.js";
import { t } from "../i18n.js";
import { useResource } from "../live.js";
import { Page, Status, Loading, Empty, When, FormError, FINAL, go } from "../ui.js";

export const MAX_COMPARED = 3;
const DAY_MS = 24 * 3600 * 1000;

/** The hours of usage, summed per service (latency figures: the worst hour's). */
export function usageByService(items) {
  const by = new Map();
  for (const hour of items) {
    const sum = by.get(hour.service) || { requests: 0, errors: 0, prompt: 0, completion: 0, p50: null, p99: null };
    sum.requests += hour.requests;
    sum.errors += hour.errors;
    sum.prompt += hour.prompt_tokens;
    sum.completion += hour.completion_tokens;
    for (const q of ["p50", "p99"]) {
      const value = hour.latency_ms[q];
      if (value !== null) sum[q] = Math.max(sum[q] ?? 0, value);
    }
    by.set(hour.service, sum);
  }
  return by;
}

function UsageTable() {
  const [since] = useState(() => new Date(Date.now() - DAY_MS).toISOString());
  const { data } = useResource(`/api/v1/usage?from=${encodeURIComponent(since)}`, {
    moving: () => true, pollMs: 15000,
  });
  if (!data) return null;
  const rows = [...usageByService(data.items)];
  const ms = (v) => (v === null ? "—" : v === Infinity ? "> 300 s" : `≤ ${v} ms`);
  return html`<h2>${t("services.usage")}</h2>
    ${!rows.length ? html`<p class="muted">${t("services.no_usage")}</p>`
      : html`<div class="table-wrap"><table class="list" data-testid="usage">
        <thead><tr><th>${t("field.name")}</th><th>${t("services.requests")}</th><th>${t("services.errors")}</th>
          <th>${t("services.prompt_tokens")}</th><th>${t("services.completion_tokens")}</th>
          <th>${t("services.latency_p50")}</th><th>${t("services.latency_p99")}</th></tr></thead>
        <tbody>${rows.map(([name, u]) => html`<tr data-name=${name}>
          <td>${name}</td><td>${u.requests}</td><td>${u.errors}</td><td>${u.prompt}</td>
          <td>${u.completion}</td><td>${ms(u.p50)}</td><td>${ms(u.p99)}</td></tr>`)}</tbody>
      </table></div>`}`;
}

export function ServiceList() {
  const { data, error, reload } = useResource("/api/v1/services", {
    refreshOn: ["service."],
    moving: (d) => d.items.some((s) => !FINAL.includes(s.status)),
  });
  const [ticked, setTicked] = useState([]);
  const [notice, setNotice] = useState("");
  const [refusal, setRefusal] = useState(null);

  /** False when refused: the box must then be unticked again. */
  function tick(name, on) {
    if (on && ticked.length >= MAX_COMPARED) {
      setNotice(t("services.at_most", { max: MAX_COMPARED }));
      return false;
    }
    setTicked(on ? [...ticked, name] : ticked.filter((n) => n !== name));
    setNotice("");
    return true;
  }
  async function remove(name) {
    if (!confirm(t("common.confirm_delete", { name }))) return;
    try {
      await api(`/api/v1/services/${encodeURIComponent(name)}`, { method: "DELETE" });
      setTicked(ticked.filter((n) => n !== name));
      reload();
    } catch (exc) {
      setRefusal(exc);
    }
  }
  const ready = new Set((data?.items || []).filter((s) => s.status === "ready").map((s) => s.name));
  useEffect(() => {
    // A ticked service that stopped being ready (deleted, failed) is no longer ticked.
    if (data) setTicked((old) => old.filter((n) => ready.has(n)));
  }, [data]);
  const canCompare = ticked.length > 0 && ticked.every((n) => ready.has(n));
  const actions = html`<button class="primary" disabled=${!canCompare}
    onClick=${() => go(`#/chat?services=${ticked.map(encodeURIComponent).join(",")}`)}>
    ${t("services.compare", { n: ticked.length, max: MAX_COMPARED })}</button>`;
  return html`<${Page} title=${t("nav.services")} actions=${actions}>
    <${FormError} error=${refusal} />
    ${notice ? html`<div class="banner warn" role="alert" data-testid="compare-limit">${notice}</div>` : null}
    <p class="muted">${t("services.tick_hint", { max: MAX_COMPARED })}</p>
    ${!data ? html`<${Loading} error=${error} />` : !data.items.length
      ? html`<${Empty}>${t("services.none")}</${Empty}>`
      : html`<div class="table-wrap"><table class="list" data-testid="services">
          <thead><tr><th></th><th>${t("field.name")}</th><th>${t("services.model")}</th><th>${t("field.status")}</th>
            <th>${t("services.server")}</th><th>${t("field.created")}</th><th></th></tr></thead>
          <tbody>${data.items.map((s) => html`<tr data-name=${s.name} data-status=${s.status}>
            <td><input type="checkbox" aria-label=${t("services.tick", { name: s.name })}
              checked=${ticked.includes(s.name)} disabled=${s.status !== "ready"}
              onChange=${(e) => tick(s.name, e.target.checked) || (e.target.checked = false)} /></td>
            <td>${s.name}</td><td>${s.model}</td>
            <td><${Status} value=${s.status} />
              ${s.status === "deploying" ? html`<progress class="indeterminate" aria-label=${t("services.deploying")}></progress>` : null}
              ${s.error ? html`<div class="field-error">${s.error.message}</div>` : null}</td>
            <td>${s.server ? `${s.server.engine} · ${t(`status.${s.server.status}`)}${s.server.restarts ? ` · ${t("services.restarts", { n: s.server.restarts })}` : ""}` : "—"}</td>
            <td><${When} iso=${s.created_at} /></td>
            <td><button class="link danger" onClick=${() => remove(s.name)}>${t("common.delete")}</button></td>
          </tr>`)}</tbody>
        </table></div>`}
    <${UsageTable} />
  </${Page}>`;
}
