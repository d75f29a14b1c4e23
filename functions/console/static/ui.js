// Small building blocks every page uses. User content only ever reaches the page as a
// text child or an attribute value, which Preact sets as text: it is never parsed as HTML.

import { html } from "./vendor/preact-htm.js";
import { t, formatTime } from "./i18n.js";

export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Why `value` is not a DNS-1123 label, or "" when it is one. */
export function labelProblem(value) {
  if (!value) return t("check.required");
  if (value.length > 63) return t("check.too_long", { max: 63 });
  return DNS_LABEL.test(value) ? "" : t("check.dns_label");
}

export const FINAL = ["ready", "failed", "succeeded", "cancelled", "completed"];

export function Page({ title, actions, children }) {
  return html`<section class="page">
    <header class="page-head">
      <h1>${title}</h1>
      <div class="actions">${actions}</div>
    </header>
    ${children}
  </section>`;
}

export function Status({ value }) {
  const moving = value && !FINAL.includes(value);
  return html`<span class=${`status status-${value}`} data-status=${value}>
    ${moving ? html`<span class="spinner" aria-hidden="true"></span>` : null}
    ${t(`status.${value}`)}
  </span>`;
}

/** A form field: label, control and, under it, what is wrong with its value. */
export function Field({ label, error, hint, children, wide }) {
  return html`<label class=${wide ? "field wide" : "field"}>
    <span class="field-label">${label}</span>
    ${children}
    ${hint && !error ? html`<small class="hint">${hint}</small>` : null}
    ${error ? html`<small class="field-error" role="alert">${error}</small>` : null}
  </label>`;
}

/** The server's refusal: its message, and each problem whose field the form does not
 * show (`shown`: the fields the form put an error beside, filled in as it renders). */
export function FormError({ error, shown }) {
  if (!error) return null;
  const others = Object.entries(error.fields || {}).filter(([field]) => !shown || !shown.has(field));
  return html`<div class="banner error" role="alert">
    <strong>${error.status ? t("error.refused", { status: error.status }) : t("error.check")}</strong>
    ${" "}${error.message}
    ${others.length ? html`<ul>${others.map(([field, message]) => html`<li><code>${field}</code>: ${message}</li>`)}</ul>` : null}
  </div>`;
}

/** The first namespace of `cluster`, for when the cluster changes under a form. */
export function firstNamespace(clusters, cluster) {
  return clusters.find((c) => c.name === cluster)?.namespaces[0] || "default";
}

export function Loading({ error }) {
  if (error) return html`<div class="banner error" role="alert">${error.message}</div>`;
  return html`<p class="muted"><span class="spinner"></span> ${t("common.loading")}</p>`;
}

export function Empty({ children }) {
  return html`<p class="empty muted">${children}</p>`;
}

export function When({ iso }) {
  return html`<time datetime=${iso}>${formatTime(iso)}</time>`;
}

export function Labels({ labels }) {
  const entries = Object.entries(labels || {});
  return html`<span class="labels"
    >${entries.map(([k, v]) => html`<span class="chip">${k}=${v}</span>`)}</span
  >`;
}

export function Bar({ value, max, label }) {
  const ratio = max ? Math.min(1, value / max) : 0;
  return html`<span class="bar" title=${label}>
    <progress value=${value || 0} max=${max || 1}></progress>
    <span class="bar-text">${label || `${Math.round(ratio * 100)}%`}</span>
  </span>`;
}

/** Options for a <select>: `[value, label]` pairs, or values labelled by themselves. */
export function Options({ items, blank }) {
  return html`${blank !== undefined ? html`<option value="">${blank}</option>` : null}
    ${items.map((item) => {
      const [value, label] = Array.isArray(item) ? item : [item, item];
      return html`<option value=${value}>${label}</option>`;
    })}`;
}

/** Kubernetes quantities ("500m", "4", "16Gi") as numbers, to compare a request with
 * its limit before the server does; NaN when it is not a quantity. */
const SUFFIX = { m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
export function quantity(text) {
  const match = /^\s*([0-9]*\.?[0-9]+)\s*(m|k|M|G|T|Ki|Mi|Gi|Ti)?\s*$/.exec(String(text ?? ""));
  if (!match) return NaN;
  return parseFloat(match[1]) * (match[2] ? SUFFIX[match[2]] : 1);
}

/** Problems of a {request, limit} pair, keyed "request"/"limit". */
export function spanProblems(span) {
  const problems = {};
  const request = quantity(span.request);
  const limit = quantity(span.limit);
  if (span.request !== "" && Number.isNaN(request)) problems.request = t("check.quantity");
  if (span.limit !== "" && Number.isNaN(limit)) problems.limit = t("check.quantity");
  if (!problems.request && !problems.limit && request > limit) {
    problems.request = t("check.request_over_limit", { request: span.request, limit: span.limit });
  }
  return problems;
}

export function go(hash) {
  location.hash = hash;
}
