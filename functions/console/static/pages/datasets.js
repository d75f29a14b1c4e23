// Datasets: the list, and one dataset's stats, token lengths, preview and errors.

import { html, useState } from "../vendor/preact-htm.js";
import { api } from "../api.js";
import { t, formatNumber } from "../i18n.js";
import { useResource } from "../live.js";
import { Page, Status, Loading, Empty, When, Labels, FINAL, FormError, go } from "../ui.js";

export { DatasetForm } from "./dataset-form.js";

export function DatasetList() {
  const { data, error } = useResource("/api/v1/datasets", {
    refreshOn: ["dataset."],
    moving: (d) => d.items.some((x) => !FINAL.includes(x.status)),
  });
  const actions = html`<a class="button primary" href="#/datasets/new">${t("datasets.upload")}</a>`;
  return html`<${Page} title=${t("nav.datasets")} actions=${actions}>
    ${!data ? html`<${Loading} error=${error} />` : !data.items.length
      ? html`<${Empty}>${t("datasets.none")}</${Empty}>`
      : html`<div class="table-wrap"><table class="list" data-testid="datasets">
          <thead><tr>
            <th>${t("field.name")}</th><th>${t("field.status")}</th><th>${t("datasets.rows")}</th>
            <th>${t("field.language")}</th><th>${t("field.labels")}</th><th>${t("field.created")}</th>
          </tr></thead>
          <tbody>${data.items.map((d) => html`<tr data-name=${d.name}>
            <td><a href=${`#/datasets/${encodeURIComponent(d.name)}`}>${d.name}</a></td>
            <td><${Status} value=${d.status} /></td>
            <td>${d.stats ? formatNumber(d.stats.rows) : "—"}</td>
            <td>${t(`language.${d.language}`)}</td>
            <td><${Labels} labels=${d.labels} /></td>
            <td><${When} iso=${d.created_at} /></td>
          </tr>`)}</tbody>
        </table></div>`}
  </${Page}>`;
}

function Histogram({ histogram }) {
  if (!histogram || !histogram.counts.length) return null;
  const top = Math.max(...histogram.counts, 1);
  return html`<figure class="histogram" data-testid="histogram">
    <div class="bars">
      ${histogram.counts.map((count, i) => {
        const range = `${histogram.edges[i]}–${histogram.edges[i + 1] - 1}`;
        return html`<div class="bar-col" title=${t("datasets.bin", { range, count })}>
          <div class="bar-fill" style=${{ height: `${(100 * count) / top}%` }}></div>
        </div>`;
      })}
    </div>
    <figcaption>
      <span>${histogram.edges[0]}</span>
      <span>${t("datasets.histogram")}</span>
      <span>${histogram.edges[histogram.edges.length - 1] - 1}</span>
    </figcaption>
  </figure>`;
}

function TokenStats({ tokens }) {
  if (!tokens) return null;
  const row = (key) => {
    const s = tokens[key] || {};
    return html`<tr><th>${t(`field.${key}`)}</th><td>${s.min}</td><td>${s.median}</td><td>${s.p95}</td><td>${s.max}</td></tr>`;
  };
  return html`<div class="panel">
    <h2>${t("datasets.tokens")}</h2>
    <table class="compact">
      <thead><tr><th></th><th>${t("datasets.min")}</th><th>${t("datasets.median")}</th><th>${t("datasets.p95")}</th><th>${t("datasets.max")}</th></tr></thead>
      <tbody>${["question", "answer", "conversation"].filter((k) => tokens[k]).map(row)}</tbody>
    </table>
    <p class="muted">${t("datasets.over_block", { rows: tokens.rows_over_block_size, block: tokens.block_size })}
      ${tokens.sampled ? ` ${t("datasets.sampled")}` : ""}</p>
    <${Histogram} histogram=${tokens.histogram} />
  </div>`;
}

function Problems({ error }) {
  if (!error) return null;
  return html`<div class="panel" data-testid="dataset-errors">
    <h2>${t("datasets.errors")}</h2>
    <p class="banner error">${error.message}</p>
    ${error.details && error.details.length
      ? html`<table class="compact">
          <thead><tr><th>${t("field.file")}</th><th>${t("field.line")}</th><th>${t("field.field")}</th><th>${t("field.message")}</th></tr></thead>
          <tbody>${error.details.map((d) => html`<tr>
            <td>${d.file || ""}</td><td>${d.line ?? ""}</td><td>${d.field || ""}</td><td>${d.message}</td>
          </tr>`)}</tbody>
        </table>`
      : null}
  </div>`;
}

function Turns({ messages }) {
  return messages.map((m) => html`<div class="turn ${m.role}${m.weight === 0 ? " untrained" : ""}"><b>${t(`role.${m.role}`)}</b> ${m.content}</div>`);
}

function Preview({ name }) {
  const { data, error } = useResource(`/api/v1/datasets/${encodeURIComponent(name)}/preview?limit=20`);
  if (!data) return html`<${Loading} error=${error} />`;
  // Preference pairs (a prompt, chosen and rejected), conversations, or Q&A pairs.
  const pairs = data.rows.some((r) => "chosen" in r);
  const chats = data.rows.some((r) => r.messages);
  const head = pairs ? ["prompt", "chosen", "rejected"] : chats ? ["conversation"] : ["question", "answer"];
  const cells = (r) => pairs
    ? [r.messages ? html`<${Turns} messages=${r.messages} />` : r.prompt, r.chosen, r.rejected]
    : chats ? [html`<${Turns} messages=${r.messages} />`] : [r.question, r.answer];
  return html`<div class="panel">
    <h2>${t("datasets.preview")}</h2>
    <div class="table-wrap"><table class="list preview" data-testid="preview">
      <thead><tr><th>#</th>${head.map((h) => html`<th>${t(`field.${h}`)}</th>`)}</tr></thead>
      <tbody>${data.rows.map((r, i) => html`<tr><td>${i + 1}</td>${cells(r).map((c) => html`<td>${c}</td>`)}</tr>`)}</tbody>
    </table></div>
  </div>`;
}

export function DatasetDetail({ params: [name] }) {
  const path = `/api/v1/datasets/${encodeURIComponent(name)}`;
  const { data: d, error } = useResource(path, {
    refreshOn: ["dataset."],
    // A dataset awaiting its upload moves only when the client uploads: no polling.
    moving: (x) => !FINAL.includes(x.status) && x.status !== "awaiting_upload",
  });
  const [refusal, setRefusal] = useState(null);
  async function remove() {
    if (!confirm(t("common.confirm_delete", { name }))) return;
    try {
      await api(path, { method: "DELETE" });
      go("#/datasets");
    } catch (exc) {
      setRefusal(exc);
    }
  }
  if (!d) return html`<${Page} title=${name}><${Loading} error=${error} /></${Page}>`;
  const actions = html`<button class="danger" onClick=${remove}>${t("common.delete")}</button>`;
  return html`<${Page} title=${d.name} actions=${actions}>
    <${FormError} error=${refusal} />
    <dl class="facts">
      <dt>${t("field.status")}</dt><dd><${Status} value=${d.status} />
        ${FINAL.includes(d.status) ? null : html`<progress class="indeterminate" aria-label=${t("datasets.validating")}></progress>`}</dd>
      <dt>${t("field.language")}</dt><dd>${t(`language.${d.language}`)}</dd>
      <dt>${t("field.cluster")}</dt><dd>${d.cluster} / ${d.namespace}</dd>
      <dt>${t("field.labels")}</dt><dd><${Labels} labels=${d.labels} /></dd>
      <dt>${t("field.license")}</dt><dd>${d.license || "—"}</dd>
      <dt>${t("field.size_category")}</dt><dd>${d.size_category || "—"}</dd>
      <dt>${t("field.task_type")}</dt><dd>${d.task?.type} ${(d.task?.subtypes || []).join(", ")}</dd>
      <dt>${t("field.feature_mapping")}</dt><dd>${Object.entries(d.feature_mapping || {}).map(([f, c]) => `${c} → ${t(`field.${f}`)}`).join(", ")}</dd>
      ${d.kind ? html`<dt>${t("datasets.kind")}</dt><dd data-testid="kind">${t(`datasets.kind_${d.kind}`)}</dd>` : null}
      ${d.stats?.turns?.max ? html`<dt>${t("datasets.turns")}</dt><dd>${t("datasets.turns_summary", d.stats.turns)}</dd>` : null}
      <dt>${t("datasets.rows")}</dt><dd>${Object.entries(d.splits || {}).map(([split, s]) => `${t(`split_name.${split}`)}: ${s.rows ?? "—"}`).join(" · ") || "—"}</dd>
      <dt>${t("field.created")}</dt><dd><${When} iso=${d.created_at} /></dd>
    </dl>
    <${Problems} error=${d.error} />
    ${d.warnings && d.warnings.length ? html`<div class="panel"><h2>${t("datasets.warnings")}</h2>
      <ul>${d.warnings.map((w) => html`<li>${w.line ? `${t("field.line")} ${w.line}: ` : ""}${w.message}</li>`)}</ul></div>` : null}
    <${TokenStats} tokens=${d.stats?.tokens} />
    ${d.status === "ready" ? html`<${Preview} name=${d.name} />` : null}
  </${Page}>`;
}
