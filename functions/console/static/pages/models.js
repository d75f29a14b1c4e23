// The model repository (base and fine-tuned models, their scores and lineage), and the
// deploy form that turns one into a model service.

import { html, useState, useEffect } from "../vendor/preact-htm.js";
import { api, download } from "../api.js";
import { t, formatNumber } from "../i18n.js";
import { useResource } from "../live.js";
import { Page, Loading, Empty, When, Field, FormError, Options, labelProblem, spanProblems, firstNamespace, go } from "../ui.js";

function Lineage({ model }) {
  if (model.kind === "base") return html`<span class="muted">${model.builtin ? t("models.builtin") : model.uri}</span>`;
  return html`<span class="lineage">
    ${model.base_model} → <a href=${`#/experiments/${encodeURIComponent(model.experiment)}`}>${model.experiment}</a>
    / ${model.task}${model.dataset?.name ? html` · ${t("field.dataset")} ${model.dataset.name}` : null}
    · ${model.adapter ? t("models.adapter") : t("models.full")}
  </span>`;
}

export function ModelList() {
  const { data, error, reload } = useResource("/api/v1/models", {
    refreshOn: ["model."],
    moving: (x) => x.items.some((m) => m.status === "merging"),
  });
  const [refusal, setRefusal] = useState(null);
  async function merge(name) {
    try {
      await api(`/api/v1/models/${encodeURIComponent(name)}/merge`, { method: "POST", json: {} });
      setRefusal(null);
      reload();
    } catch (exc) {
      setRefusal(exc);
    }
  }
  return html`<${Page} title=${t("nav.models")}>
    <${FormError} error=${refusal} />
    ${!data ? html`<${Loading} error=${error} />` : !data.items.length
      ? html`<${Empty}>${t("models.none")}</${Empty}>`
      : html`<div class="table-wrap"><table class="list" data-testid="models">
          <thead><tr><th>${t("field.name")}</th><th>${t("models.kind")}</th><th>${t("models.lineage")}</th>
            <th>${t("experiments.score")}</th><th>${t("field.created")}</th><th></th></tr></thead>
          <tbody>${data.items.map((m) => html`<tr data-name=${m.name}>
            <td>${m.name}${m.status && m.status !== "ready"
              ? html` <span class="status ${m.status}" data-testid="model-status" title=${m.error?.message || ""}>${t(`models.status_${m.status}`)}</span>` : null}</td>
            <td>${t(`models.kind_${m.kind}`)}</td><td><${Lineage} model=${m} /></td>
            <td>${m.score === null || m.score === undefined ? "—"
              : html`${formatNumber(m.score)} <small class="muted">${t("models.base_score", { score: formatNumber(m.base_score) })}</small>`}</td>
            <td><${When} iso=${m.created_at} /></td>
            <td>${m.status === "ready" || !m.status ? html`<a class="button" href=${`#/models/${encodeURIComponent(m.name)}/deploy`}>${t("models.deploy")}</a>
              ${m.kind === "finetuned" ? html` <button type="button" data-testid="download"
                onClick=${() => download(`/api/v1/models/${encodeURIComponent(m.name)}/download`, `${m.name}.tar`)}>${t("models.download")}</button>` : null}
              ${m.adapter ? html` <button type="button" data-testid="merge" title=${t("models.merge_hint")}
                onClick=${() => merge(m.name)}>${t("models.merge")}</button>` : null}` : null}</td>
          </tr>`)}</tbody>
        </table></div>`}
  </${Page}>`;
}

/** A default service name for a model: a DNS label no longer than 63 characters. */
function serviceName(model) {
  return `${model.toLowerCase().replace(/[^a-z0-9-]+/g, "-").slice(0, 59).replace(/-+$/, "")}-svc`;
}

export function DeployForm({ params: [model] }) {
  const [form, setForm] = useState({
    name: serviceName(model), cluster: "local", namespace: "default", gpu_count: "0", replicas: "1",
    cpu: { request: "1", limit: "2" }, memory: { request: "4Gi", limit: "6Gi" }, store: false,
  });
  const [clusters, setClusters] = useState([]);
  const [refusal, setRefusal] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { api("/api/v1/clusters").then((c) => setClusters(c.items)); }, []);

  const problems = { name: labelProblem(form.name) };
  for (const kind of ["cpu", "memory"]) {
    const spans = spanProblems(form[kind]);
    problems[`resources.${kind}.request`] = spans.request;
    problems[`resources.${kind}.limit`] = spans.limit;
  }
  if (!/^\d+$/.test(form.gpu_count)) problems["resources.gpu_count"] = t("check.integer");
  if (!/^\d+$/.test(form.replicas) || Number(form.replicas) < 1) problems.replicas = t("check.integer");
  const server = refusal?.fields || {};
  const shown = new Set();
  const error = (key) => {
    shown.add(key);
    return problems[key] || server[key] || "";
  };
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.value });
  const setSpan = (kind, bound) => (e) => setForm({ ...form, [kind]: { ...form[kind], [bound]: e.target.value } });

  async function submit(event) {
    event.preventDefault();
    if (Object.values(problems).some(Boolean)) return;
    setBusy(true);
    setRefusal(null);
    try {
      await api("/api/v1/services", {
        method: "POST",
        json: {
          name: form.name, model, cluster: form.cluster, namespace: form.namespace,
          replicas: Number(form.replicas), store: form.store,
          resources: { gpu_count: Number(form.gpu_count), cpu: form.cpu, memory: form.memory },
        },
      });
      go("#/services");
    } catch (exc) {
      setRefusal(exc);
    } finally {
      setBusy(false);
    }
  }
  const namespaces = clusters.find((c) => c.name === form.cluster)?.namespaces || [form.namespace];
  return html`<${Page} title=${t("models.deploy_title", { model })}>
    <form class="form" onSubmit=${submit} novalidate>
      <${FormError} error=${refusal} shown=${shown} />
      <fieldset class="grid"><legend>${t("models.service")}</legend>
        <${Field} label=${t("models.service_name")} error=${error("name")} hint=${t("check.dns_label")}>
          <input name="name" value=${form.name} onInput=${set("name")} /></${Field}>
        <${Field} label=${t("field.cluster")} error=${error("cluster")}>
          <select name="cluster" value=${form.cluster} onChange=${(e) => setForm({ ...form, cluster: e.target.value, namespace: firstNamespace(clusters, e.target.value) })}><${Options} items=${clusters.map((c) => c.name)} /></select></${Field}>
        <${Field} label=${t("field.namespace")} error=${error("namespace")}>
          <select name="namespace" value=${form.namespace} onChange=${set("namespace")}><${Options} items=${namespaces} /></select></${Field}>
        <${Field} label=${t("field.gpu_count")} error=${error("resources.gpu_count")} hint=${t("models.gpu_hint")}>
          <input name="gpu_count" value=${form.gpu_count} inputmode="numeric" onInput=${set("gpu_count")} /></${Field}>
        <${Field} label=${t("models.replicas")} error=${error("replicas")}>
          <input name="replicas" value=${form.replicas} inputmode="numeric" onInput=${set("replicas")} /></${Field}>
        ${["cpu", "memory"].flatMap((kind) => ["request", "limit"].map((bound) => html`
          <${Field} label=${t(`field.${kind}_${bound}`)} error=${error(`resources.${kind}.${bound}`)}>
            <input name=${`${kind}.${bound}`} value=${form[kind][bound]} onInput=${setSpan(kind, bound)} /></${Field}>`))}
        <${Field} label=${t("models.store")} hint=${t("models.store_hint")}>
          <input type="checkbox" name="store" checked=${form.store}
            onChange=${(e) => setForm({ ...form, store: e.target.checked })} /></${Field}>
      </fieldset>
      <div class="form-actions">
        <button type="submit" class="primary" disabled=${busy}>${t("models.deploy")}</button>
        <a href="#/models">${t("common.cancel")}</a>
      </div>
    </form>
  </${Page}>`;
}
