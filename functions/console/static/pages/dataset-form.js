// The upload form: every field of SPEC.md §2, from a local file, a remote address or a
// plugin; the chosen file's columns are offered for the feature mapping.

import { html, useState, useEffect } from "../vendor/preact-htm.js";
import { api, upload } from "../api.js";
import { t } from "../i18n.js";
import { Page, Field, FormError, Options, labelProblem, firstNamespace, go } from "../ui.js";

/** The header row of a CSV file, read from its first 64 KB in the browser. */
export async function csvColumns(file) {
  const text = (await file.slice(0, 65536).text()).replace(/^\uFEFF/, "");
  const columns = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (cell += '"'), i++;
      else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") columns.push(cell.trim()), (cell = "");
    else if (c === "\n" || c === "\r") break;
    else cell += c;
  }
  columns.push(cell.trim());
  return columns.filter(Boolean);
}

const EMPTY = {
  name: "", language: "en", cluster: "local", namespace: "default", license: "",
  size_category: "", task_type: "question-answering", subtypes: "",
  question: "question", answer: "answer", source: "file", uri: "", validate_uri: "", test_uri: "",
  plugin: "", parameters: "{}", format: "auto",
};
const FORMATS = ["auto", "csv", "openai", "sharegpt", "alpaca", "preference"];
const PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected"];
const ACCEPT = ".csv,text/csv,.jsonl,.json,application/json";

function metadataOf(form, labels) {
  const metadata = {
    name: form.name,
    labels: Object.fromEntries(labels.filter(([k]) => k.trim()).map(([k, v]) => [k.trim(), v])),
    language: form.language,
    cluster: form.cluster,
    namespace: form.namespace,
    task: { type: form.task_type, subtypes: form.subtypes.split(",").map((s) => s.trim()).filter(Boolean) },
    // A CSV whose header names prompt, chosen and rejected holds preference pairs.
    feature_mapping: form.preference
      ? Object.fromEntries(PREFERENCE_COLUMNS.map((c) => [c, c]))
      : { question: form.question, answer: form.answer },
    format: form.format,
  };
  if (form.license) metadata.license = form.license;
  if (form.size_category) metadata.size_category = form.size_category;
  return metadata;
}

export function DatasetForm() {
  const [form, setForm] = useState(EMPTY);
  const [labels, setLabels] = useState([["", ""]]);
  const [files, setFiles] = useState({});
  const [columns, setColumns] = useState([]);
  const [options, setOptions] = useState({ plugins: [], size_categories: [] });
  const [clusters, setClusters] = useState([]);
  const [refusal, setRefusal] = useState(null);
  const [sent, setSent] = useState(null);
  const [touched, setTouched] = useState(false);

  useEffect(() => {
    api("/api/v1/dataset-options").then(setOptions);
    api("/api/v1/clusters").then((c) => setClusters(c.items));
  }, []);

  const set = (key) => (e) => setForm({ ...form, [key]: e.target.value });
  const server = refusal ? refusal.fields : {};
  /** What is wrong before the server is asked; `all` also flags what is still empty. */
  function check(all) {
    const found = {};
    if (all || form.name) found.name = labelProblem(form.name);
    if (form.question && form.question === form.answer) found.answer = t("check.same_columns");
    if (form.source === "file" && all && !files.file) found.file = t("check.required");
    if (form.source === "remote" && (all || form.uri) && !/^(s3|https?):\/\/./.test(form.uri)) {
      found.uri = t("check.remote_uri");
    }
    if (form.source === "plugin") {
      if (all && !form.plugin) found.plugin = t("check.required");
      try {
        const parsed = JSON.parse(form.parameters);
        if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error();
      } catch {
        found.parameters = t("check.json_object");
      }
    }
    return found;
  }
  const local = check(touched);
  const shown = new Set();
  const error = (...names) => {
    names.forEach((n) => shown.add(n));
    return local[names[0]] || names.map((n) => server[n]).find(Boolean) || "";
  };
  const labelErrors = Object.entries(server).filter(([field]) => field.startsWith("labels"));
  labelErrors.forEach(([field]) => shown.add(field));
  const namespaces = clusters.find((c) => c.name === form.cluster)?.namespaces || [form.namespace];

  function chooseSource(e) {
    // The file inputs are made afresh when their source comes back: forget old choices.
    setForm({ ...form, source: e.target.value });
    setFiles({});
    setColumns([]);
  }

  async function chooseFile(split, file) {
    setFiles((old) => ({ ...old, [split]: file }));
    if (split !== "file") return;
    if (!file || /\.(jsonl|json|ndjson)$/i.test(file.name)) { // conversations: no columns
      setForm((f) => ({ ...f, preference: false }));
      return setColumns([]);
    }
    const found = await csvColumns(file);
    setColumns(found);
    const pick = (wanted, fallback) => (found.includes(wanted) ? wanted : fallback);
    const preference = PREFERENCE_COLUMNS.every((c) => found.includes(c)) && !found.includes("question");
    setForm((f) => ({ ...f, preference, question: pick(f.question, found[0] || ""), answer: pick(f.answer, found[1] || "") }));
  }

  async function submit(event) {
    event.preventDefault();
    setTouched(true);
    if (Object.values(check(true)).some(Boolean)) return;
    setRefusal(null);
    const metadata = metadataOf(form, labels);
    try {
      if (form.source === "file") {
        const body = new FormData();
        for (const split of ["file", "validate", "test"]) if (files[split]) body.append(split, files[split]);
        body.append("metadata", JSON.stringify(metadata));
        setSent(0);
        await upload("/api/v1/datasets", body, setSent);
      } else {
        const source = form.source === "plugin"
          ? { type: "plugin", plugin: form.plugin, parameters: JSON.parse(form.parameters) }
          : {
              type: form.uri.startsWith("s3://") ? "s3" : "http",
              uri: form.uri,
              ...(form.validate_uri ? { validate_uri: form.validate_uri } : {}),
              ...(form.test_uri ? { test_uri: form.test_uri } : {}),
            };
        await api("/api/v1/datasets", { method: "POST", json: { ...metadata, source } });
      }
      go(`#/datasets/${encodeURIComponent(form.name)}`);
    } catch (exc) {
      setRefusal(exc);
    } finally {
      setSent(null);
    }
  }

  const mapping = (key) => columns.length && form.source === "file"
    ? html`<select name=${key} value=${form[key]} onChange=${set(key)}><${Options} items=${columns} /></select>`
    : html`<input name=${key} value=${form[key]} onInput=${set(key)} />`;

  return html`<${Page} title=${t("datasets.upload")}>
    <form class="form" onSubmit=${submit} novalidate>
      <${FormError} error=${refusal} shown=${shown} />
      <fieldset><legend>${t("datasets.source")}</legend>
        <div class="radios">
          ${["file", "remote", "plugin"].map((s) => html`<label><input type="radio" name="source" value=${s}
            checked=${form.source === s} onChange=${chooseSource} /> ${t(`datasets.source_${s}`)}</label>`)}
        </div>
        ${form.source === "file" ? html`
          <${Field} label=${t("split.train")} error=${error("file")} hint=${t("datasets.file_hint")}>
            <input type="file" name="file" accept=${ACCEPT} onChange=${(e) => chooseFile("file", e.target.files[0])} />
          </${Field}>
          <${Field} label=${t("split.validate")} error=${error("validate")}>
            <input type="file" name="validate" accept=${ACCEPT} onChange=${(e) => chooseFile("validate", e.target.files[0])} />
          </${Field}>
          <${Field} label=${t("split.test")} error=${error("test")}>
            <input type="file" name="test" accept=${ACCEPT} onChange=${(e) => chooseFile("test", e.target.files[0])} />
          </${Field}>` : null}
        ${form.source === "remote" ? html`
          <${Field} label=${t("datasets.uri")} error=${error("uri", "source.uri", "source.http.uri", "source.s3.uri")} hint=${t("datasets.uri_hint")} wide>
            <input name="uri" value=${form.uri} placeholder="https://… / s3://…" onInput=${set("uri")} />
          </${Field}>
          <${Field} label=${t("datasets.validate_uri")} error=${error("validate_uri", "source.http.validate_uri", "source.s3.validate_uri")} wide>
            <input name="validate_uri" value=${form.validate_uri} onInput=${set("validate_uri")} />
          </${Field}>
          <${Field} label=${t("datasets.test_uri")} error=${error("test_uri", "source.http.test_uri", "source.s3.test_uri")} wide>
            <input name="test_uri" value=${form.test_uri} onInput=${set("test_uri")} />
          </${Field}>` : null}
        ${form.source === "plugin" ? html`
          <${Field} label=${t("datasets.plugin")} error=${error("plugin", "source.plugin", "source.plugin.plugin")}>
            <select name="plugin" value=${form.plugin} onChange=${set("plugin")}>
              <${Options} blank=${t("common.choose")} items=${options.plugins.map((p) => [p.name, p.name])} />
            </select>
          </${Field}>
          <${Field} label=${t("datasets.plugin_parameters")} error=${error("parameters", "source.parameters", "source.plugin.parameters")} wide>
            <textarea name="parameters" rows="3" value=${form.parameters} onInput=${set("parameters")}></textarea>
          </${Field}>` : null}
        <${Field} label=${t("field.format")} error=${error("format")} hint=${t("datasets.format_hint")}>
          <select name="format" value=${form.format} onChange=${set("format")}>
            <${Options} items=${FORMATS.map((f) => [f, t(`datasets.format_${f}`)])} />
          </select>
        </${Field}>
      </fieldset>
      <fieldset><legend>${t("datasets.describe")}</legend>
        <${Field} label=${t("field.name")} error=${error("name")} hint=${t("check.dns_label")}>
          <input name="name" value=${form.name} onInput=${set("name")} autocomplete="off" />
        </${Field}>
        <${Field} label=${t("field.language")} error=${error("language")}>
          <select name="language" value=${form.language} onChange=${set("language")}>
            <${Options} items=${[["zh", t("language.zh")], ["en", t("language.en")]]} />
          </select>
        </${Field}>
        <${Field} label=${t("field.cluster")} error=${error("cluster")}>
          <select name="cluster" value=${form.cluster} onChange=${(e) => setForm({ ...form, cluster: e.target.value, namespace: firstNamespace(clusters, e.target.value) })}><${Options} items=${clusters.map((c) => c.name)} /></select>
        </${Field}>
        <${Field} label=${t("field.namespace")} error=${error("namespace")}>
          <select name="namespace" value=${form.namespace} onChange=${set("namespace")}><${Options} items=${namespaces} /></select>
        </${Field}>
        <${Field} label=${t("field.license")} error=${error("license")}>
          <input name="license" value=${form.license} placeholder="apache-2.0" onInput=${set("license")} />
        </${Field}>
        <${Field} label=${t("field.size_category")} error=${error("size_category")}>
          <select name="size_category" value=${form.size_category} onChange=${set("size_category")}>
            <${Options} blank=${t("datasets.size_auto")} items=${options.size_categories} />
          </select>
        </${Field}>
        <${Field} label=${t("field.task_type")} error=${error("task.type")}>
          <input name="task_type" value=${form.task_type} onInput=${set("task_type")} />
        </${Field}>
        <${Field} label=${t("field.subtypes")} error=${error("task.subtypes")} hint=${t("datasets.subtypes_hint")}>
          <input name="subtypes" value=${form.subtypes} onInput=${set("subtypes")} />
        </${Field}>
      </fieldset>
      <fieldset><legend>${t("field.labels")}</legend>
        ${labels.map(([k, v], i) => html`<div class="pair">
          <input aria-label=${t("datasets.label_key")} placeholder=${t("datasets.label_key")} value=${k}
            onInput=${(e) => setLabels(labels.map((l, j) => (j === i ? [e.target.value, l[1]] : l)))} />
          <input aria-label=${t("datasets.label_value")} placeholder=${t("datasets.label_value")} value=${v}
            onInput=${(e) => setLabels(labels.map((l, j) => (j === i ? [l[0], e.target.value] : l)))} />
          <button type="button" class="link" onClick=${() => setLabels(labels.filter((_, j) => j !== i))}>${t("common.remove")}</button>
        </div>`)}
        ${labelErrors.map(([field, message]) => html`<small class="field-error" role="alert">${field}: ${message}</small>`)}
        <button type="button" onClick=${() => setLabels([...labels, ["", ""]])}>${t("datasets.add_label")}</button>
      </fieldset>
      <fieldset><legend>${t("field.feature_mapping")}</legend>
        ${form.preference ? html`<p class="muted" data-testid="preference-csv">${t("datasets.preference_csv")}</p>` : null}
        <${Field} label=${t("field.question")} error=${error("question", "feature_mapping.question", "feature_mapping")}>${mapping("question")}</${Field}>
        <${Field} label=${t("field.answer")} error=${error("answer", "feature_mapping.answer")}>${mapping("answer")}</${Field}>
      </fieldset>
      <div class="form-actions">
        <button type="submit" class="primary" disabled=${sent !== null}>${t("datasets.submit")}</button>
        ${sent !== null ? html`<progress value=${sent} max="1" aria-label=${t("datasets.uploading")}></progress> ${Math.round(sent * 100)}%` : null}
        <a href="#/datasets">${t("common.cancel")}</a>
      </div>
    </form>
  </${Page}>`;
}
