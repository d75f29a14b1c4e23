// Parameter groups: the list, and a create form built from the server's parameter
// schema, so its defaults and ranges are the ones the server applies.

import { html, useState, useEffect } from "../vendor/preact-htm.js";
import { api } from "../api.js";
import { t, formatNumber } from "../i18n.js";
import { useResource } from "../live.js";
import { Page, Loading, Empty, When, Field, FormError, Options, labelProblem, firstNamespace, go } from "../ui.js";

export function GroupList() {
  const { data, error, reload } = useResource("/api/v1/parameter-groups");
  const [refusal, setRefusal] = useState(null);
  async function remove(name) {
    if (!confirm(t("common.confirm_delete", { name }))) return;
    try {
      await api(`/api/v1/parameter-groups/${encodeURIComponent(name)}`, { method: "DELETE" });
      setRefusal(null);
      reload();
    } catch (exc) {
      setRefusal(exc);
    }
  }
  const actions = html`<a class="button primary" href="#/parameter-groups/new">${t("groups.create")}</a>`;
  return html`<${Page} title=${t("nav.groups")} actions=${actions}>
    <${FormError} error=${refusal} />
    ${!data ? html`<${Loading} error=${error} />` : !data.items.length
      ? html`<${Empty}>${t("groups.none")}</${Empty}>`
      : html`<div class="table-wrap"><table class="list" data-testid="groups">
          <thead><tr><th>${t("field.name")}</th><th>${t("field.cluster")}</th><th>${t("groups.method")}</th>
            <th>${t("param.learning_rate")}</th><th>${t("param.epochs")}</th><th>${t("param.batch_size")}</th>
            <th>${t("field.created")}</th><th></th></tr></thead>
          <tbody>${data.items.map((g) => html`<tr data-name=${g.name}>
            <td>${g.name}</td><td>${g.cluster} / ${g.namespace}</td>
            <td>${g.finetune_type} · ${g.parameters.peft ? t("groups.lora", { rank: g.parameters.lora_rank }) : t("groups.full")}</td>
            <td>${formatNumber(g.parameters.learning_rate, 6)}</td><td>${g.parameters.epochs}</td>
            <td>${g.parameters.batch_size}</td><td><${When} iso=${g.created_at} /></td>
            <td><button class="link danger" onClick=${() => remove(g.name)}>${t("common.delete")}</button></td>
          </tr>`)}</tbody>
        </table></div>`}
  </${Page}>`;
}

/** The non-null schema of an optional field (`int | None` is anyOf integer, null). */
function inner(schema) {
  return schema.anyOf?.some((s) => s.type === "null") ? schema.anyOf.find((s) => s.type !== "null") : null;
}
const isNumber = (schema) => schema?.type === "integer" || schema?.type === "number";

/** Why `text` is not a value of `schema`, or "". */
function rangeProblem(text, schema) {
  if (isNumber(inner(schema))) return text === "" ? "" : rangeProblem(text, inner(schema));
  if (!isNumber(schema)) return "";
  const value = Number(text);
  if (text === "" || Number.isNaN(value)) return t("check.number");
  if (schema.type === "integer" && !Number.isInteger(value)) return t("check.integer");
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push([value >= schema.minimum, `≥ ${schema.minimum}`]);
  if (schema.exclusiveMinimum !== undefined) bounds.push([value > schema.exclusiveMinimum, `> ${schema.exclusiveMinimum}`]);
  if (schema.maximum !== undefined) bounds.push([value <= schema.maximum, `≤ ${schema.maximum}`]);
  if (schema.exclusiveMaximum !== undefined) bounds.push([value < schema.exclusiveMaximum, `< ${schema.exclusiveMaximum}`]);
  if (bounds.every(([ok]) => ok)) return "";
  const words = bounds.map(([, bound]) => bound);
  return words.length === 2
    ? t("check.range", { low: words[0], high: words[1] })
    : t("check.bound", { bound: words[0] });
}

/** A form value (always a string or boolean) as the JSON value the API takes. */
function toValue(text, schema) {
  if (isNumber(schema)) return Number(text);
  if (schema.type === "boolean") return Boolean(text);
  if (isNumber(inner(schema))) return text === "" ? null : Number(text);
  if (schema.anyOf?.some((s) => s.type === "null")) {
    return text === "" || text === null ? null : text === true || text === "true";
  }
  if (schema.anyOf?.some((s) => s.type === "array")) {
    return text === "all-linear" ? text : text.split(",").map((s) => s.trim()).filter(Boolean);
  }
  return text;
}

function toText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value;
  return Array.isArray(value) ? value.join(", ") : String(value);
}

/** A default as the form shows it: booleans and "none" in the reader's language. */
function shown(value) {
  if (value === null || value === undefined) return t("groups.auto");
  if (typeof value === "boolean") return value ? t("common.on") : t("common.off");
  return toText(value);
}

function Control({ name, schema, value, onChange }) {
  if (schema.enum) {
    return html`<select name=${name} value=${value} onChange=${(e) => onChange(e.target.value)}>
      <${Options} items=${schema.enum.map(String)} /></select>`;
  }
  if (schema.type === "boolean") {
    return html`<input type="checkbox" name=${name} checked=${value} onChange=${(e) => onChange(e.target.checked)} />`;
  }
  if (inner(schema)?.type === "boolean") {
    return html`<select name=${name} value=${String(value)} onChange=${(e) => onChange(e.target.value)}>
      <${Options} items=${[["", t("groups.auto")], ["true", t("common.on")], ["false", t("common.off")]]} /></select>`;
  }
  return html`<input name=${name} value=${value} inputmode=${schema.type ? "decimal" : "text"}
    onInput=${(e) => onChange(e.target.value)} />`;
}

export function GroupForm() {
  const [catalogue, setCatalogue] = useState(null);
  const [clusters, setClusters] = useState([]);
  const [form, setForm] = useState({ name: "", cluster: "local", namespace: "default", preset: "" });
  const [values, setValues] = useState({});
  const [refusal, setRefusal] = useState(null);
  const [busy, setBusy] = useState(false);

  const baseline = (c, preset) =>
    (preset && c.items.find((p) => p.name === preset)?.parameters) || c.defaults;
  useEffect(() => {
    api("/api/v1/parameter-presets").then((c) => {
      setCatalogue(c);
      setValues(Object.fromEntries(Object.entries(c.defaults).map(([k, v]) => [k, toText(v)])));
    });
    api("/api/v1/clusters").then((c) => setClusters(c.items));
  }, []);
  if (!catalogue) return html`<${Page} title=${t("groups.create")}><${Loading} /></${Page}>`;

  function choosePreset(preset) {
    setForm({ ...form, preset });
    setValues(Object.fromEntries(Object.entries(baseline(catalogue, preset)).map(([k, v]) => [k, toText(v)])));
  }
  const schema = catalogue.schema;
  const server = refusal ? refusal.fields : {};
  const claimed = new Set(["name", "cluster", "namespace", ...Object.keys(schema).map((k) => `parameters.${k}`)]);
  const problems = Object.fromEntries(Object.keys(schema).map((k) => [k, rangeProblem(values[k], schema[k])]));
  const nameProblem = form.name ? labelProblem(form.name) : "";

  async function submit(event) {
    event.preventDefault();
    if (labelProblem(form.name) || Object.values(problems).some(Boolean)) {
      setForm({ ...form, name: form.name || "" });
      setRefusal({ message: t("check.fix_fields"), fields: form.name ? {} : { name: t("check.required") } });
      return;
    }
    const start = baseline(catalogue, form.preset);
    const parameters = {};
    for (const [key, text] of Object.entries(values)) {
      const value = toValue(text, schema[key]);
      if (JSON.stringify(value) !== JSON.stringify(start[key])) parameters[key] = value;
    }
    setBusy(true);
    try {
      await api("/api/v1/parameter-groups", {
        method: "POST",
        json: { ...form, preset: form.preset || undefined, parameters },
      });
      go("#/parameter-groups");
    } catch (exc) {
      setRefusal(exc);
    } finally {
      setBusy(false);
    }
  }
  const namespaces = clusters.find((c) => c.name === form.cluster)?.namespaces || [form.namespace];
  return html`<${Page} title=${t("groups.create")}>
    <form class="form" onSubmit=${submit} novalidate>
      <${FormError} error=${refusal} shown=${claimed} />
      <fieldset class="grid"><legend>${t("groups.about")}</legend>
        <${Field} label=${t("field.name")} error=${nameProblem || server.name} hint=${t("check.dns_label")}>
          <input name="name" value=${form.name} autocomplete="off" onInput=${(e) => setForm({ ...form, name: e.target.value })} />
        </${Field}>
        <${Field} label=${t("field.cluster")} error=${server.cluster}>
          <select name="cluster" value=${form.cluster} onChange=${(e) => setForm({ ...form, cluster: e.target.value, namespace: firstNamespace(clusters, e.target.value) })}>
            <${Options} items=${clusters.map((c) => c.name)} /></select>
        </${Field}>
        <${Field} label=${t("field.namespace")} error=${server.namespace}>
          <select name="namespace" value=${form.namespace} onChange=${(e) => setForm({ ...form, namespace: e.target.value })}>
            <${Options} items=${namespaces} /></select>
        </${Field}>
        <${Field} label=${t("groups.preset")} hint=${catalogue.items.find((p) => p.name === form.preset)?.description}>
          <select name="preset" value=${form.preset} onChange=${(e) => choosePreset(e.target.value)}>
            <${Options} blank=${t("groups.defaults")} items=${catalogue.items.map((p) => p.name)} /></select>
        </${Field}>
      </fieldset>
      <fieldset class="grid"><legend>${t("groups.parameters")}</legend>
        ${Object.entries(schema).map(([key, s]) => html`<${Field} label=${t(`param.${key}`)}
            error=${problems[key] || server[`parameters.${key}`]}
            hint=${t("groups.default", { value: shown(catalogue.defaults[key]) })}>
          <${Control} name=${key} schema=${s} value=${values[key]} onChange=${(v) => setValues({ ...values, [key]: v })} />
        </${Field}>`)}
      </fieldset>
      <div class="form-actions">
        <button type="submit" class="primary" disabled=${busy}>${t("groups.submit")}</button>
        <a href="#/parameter-groups">${t("common.cancel")}</a>
      </div>
    </form>
  </${Page}>`;
}
