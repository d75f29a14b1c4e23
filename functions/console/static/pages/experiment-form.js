// The experiment form: one or more tasks, the seed's rules checked as the user types
// (DNS-1123 names, request ≤ limit, one cluster/namespace for everything used).

import { html, useState, useEffect } from "../vendor/preact-htm.js";
import { api } from "../api.js";
import { t } from "../i18n.js";
import { Page, Field, FormError, Options, labelProblem, spanProblems, go } from "../ui.js";

const newTask = (i) => ({
  name: `task-${i + 1}`, base_model: "", dataset: "", parameter_group: "",
  gpu_type: "cpu", gpu_count: "1",
  cpu: { request: "1", limit: "2" }, memory: { request: "2Gi", limit: "4Gi" },
});

/** Problems by field name ("name", "tasks.0.cpu.request", ...); empty when none. */
function problemsOf(form, tasks, known, all) {
  const out = {};
  const add = (key, message) => message && (out[key] = message);
  if (all || form.name) add("name", labelProblem(form.name));
  const place = `${form.cluster}/${form.namespace}`;
  tasks.forEach((task, i) => {
    const at = `tasks.${i}`;
    add(`${at}.name`, labelProblem(task.name));
    if (tasks.findIndex((other) => other.name === task.name) !== i) add(`${at}.name`, t("check.task_twice"));
    for (const key of ["base_model", "dataset", "parameter_group"]) if (all && !task[key]) add(`${at}.${key}`, t("check.required"));
    const dataset = known.datasets.find((d) => d.name === task.dataset);
    if (dataset && `${dataset.cluster}/${dataset.namespace}` !== place) {
      add(`${at}.dataset`, t("check.elsewhere", { place: `${dataset.cluster}/${dataset.namespace}`, wanted: place }));
    } else if (dataset && dataset.status !== "ready") add(`${at}.dataset`, t("check.not_ready", { status: t(`status.${dataset.status}`) }));
    const group = known.groups.find((g) => g.name === task.parameter_group);
    if (group && `${group.cluster}/${group.namespace}` !== place) {
      add(`${at}.parameter_group`, t("check.elsewhere", { place: `${group.cluster}/${group.namespace}`, wanted: place }));
    }
    if (!/^\d+$/.test(task.gpu_count)) add(`${at}.compute.gpu_count`, t("check.integer"));
    for (const kind of ["cpu", "memory"]) {
      const spans = spanProblems(task[kind]);
      add(`${at}.resources.${kind}.request`, spans.request);
      add(`${at}.resources.${kind}.limit`, spans.limit);
    }
  });
  return out;
}

function TaskFields({ task, i, known, gpus, error, onChange, onRemove }) {
  const set = (key) => (e) => onChange({ ...task, [key]: e.target.value });
  const setSpan = (kind, bound) => (e) => onChange({ ...task, [kind]: { ...task[kind], [bound]: e.target.value } });
  const at = `tasks.${i}`;
  return html`<fieldset class="grid task-fields" data-task-index=${i}>
    <legend>${t("experiments.task_n", { n: i + 1 })}
      ${onRemove ? html` <button type="button" class="link" onClick=${onRemove}>${t("common.remove")}</button>` : null}</legend>
    <${Field} label=${t("experiments.task_name")} error=${error(`${at}.name`)}>
      <input name=${`${at}.name`} value=${task.name} onInput=${set("name")} /></${Field}>
    <${Field} label=${t("field.base_model")} error=${error(`${at}.base_model`)}>
      <select name=${`${at}.base_model`} value=${task.base_model} onChange=${set("base_model")}>
        <${Options} blank=${t("common.choose")} items=${known.models.map((m) => [m.name, `${m.name} (${t(`models.kind_${m.kind}`)})`])} /></select></${Field}>
    <${Field} label=${t("field.dataset")} error=${error(`${at}.dataset`)}>
      <select name=${`${at}.dataset`} value=${task.dataset} onChange=${set("dataset")}>
        <${Options} blank=${t("common.choose")} items=${known.datasets.map((d) => [d.name, `${d.name} · ${t(`status.${d.status}`)}`])} /></select></${Field}>
    <${Field} label=${t("field.parameter_group")} error=${error(`${at}.parameter_group`)}>
      <select name=${`${at}.parameter_group`} value=${task.parameter_group} onChange=${set("parameter_group")}>
        <${Options} blank=${t("common.choose")} items=${known.groups.map((g) => g.name)} /></select></${Field}>
    <${Field} label=${t("field.gpu_type")} error=${error(`${at}.compute.gpu_type`)} hint=${task.gpu_type === "cpu" ? t("experiments.cpu_hint") : ""}>
      <select name=${`${at}.gpu_type`} value=${task.gpu_type} onChange=${set("gpu_type")}>
        <${Options} items=${Object.entries(gpus).map(([type, n]) => [type, type === "cpu" ? t("experiments.no_gpu") : `${type} (${n})`])} /></select></${Field}>
    <${Field} label=${t("field.gpu_count")} error=${error(`${at}.compute.gpu_count`)}>
      <input name=${`${at}.gpu_count`} value=${task.gpu_count} inputmode="numeric" onInput=${set("gpu_count")} /></${Field}>
    ${["cpu", "memory"].flatMap((kind) => ["request", "limit"].map((bound) => html`
      <${Field} label=${t(`field.${kind}_${bound}`)} error=${error(`${at}.resources.${kind}.${bound}`)}
          hint=${kind === "cpu" ? t("experiments.cpu_recommended") : t("experiments.memory_hint")}>
        <input name=${`${at}.${kind}.${bound}`} value=${task[kind][bound]} onInput=${setSpan(kind, bound)} /></${Field}>`))}
  </fieldset>`;
}

export function ExperimentForm() {
  const [form, setForm] = useState({ name: "", evaluation: "rouge-bleu", cluster: "local", namespace: "default" });
  const [tasks, setTasks] = useState([newTask(0)]);
  const [known, setKnown] = useState({ models: [], datasets: [], groups: [], clusters: [], evaluations: [] });
  const [refusal, setRefusal] = useState(null);
  const [touched, setTouched] = useState(false);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    Promise.all(["models", "datasets", "parameter-groups", "clusters", "evaluations"].map((kind) => api(`/api/v1/${kind}`)))
      .then(([models, datasets, groups, clusters, evaluations]) => setKnown({
        models: models.items, datasets: datasets.items, groups: groups.items,
        clusters: clusters.items, evaluations: evaluations.items,
      }));
  }, []);

  const problems = problemsOf(form, tasks, known, touched);
  const server = refusal?.fields || {};
  const shown = new Set();
  const error = (key) => {
    shown.add(key);
    return problems[key] || server[key] || "";
  };
  const cluster = known.clusters.find((c) => c.name === form.cluster);
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.value });

  function chooseCluster(name) {
    // What the old cluster offered may not exist in the new one.
    const next = known.clusters.find((c) => c.name === name);
    setForm({ ...form, cluster: name, namespace: next?.namespaces[0] || "default" });
    setTasks(tasks.map((task) => (next && !(task.gpu_type in next.gpus) ? { ...task, gpu_type: "cpu" } : task)));
  }

  async function submit(event) {
    event.preventDefault();
    setTouched(true);
    if (Object.keys(problemsOf(form, tasks, known, true)).length) return;
    setBusy(true);
    setRefusal(null);
    try {
      await api("/api/v1/experiments", {
        method: "POST",
        json: {
          ...form,
          tasks: tasks.map((task) => ({
            name: task.name, base_model: task.base_model, dataset: task.dataset,
            parameter_group: task.parameter_group,
            compute: { gpu_type: task.gpu_type, gpu_count: Number(task.gpu_count) },
            resources: { cpu: task.cpu, memory: task.memory },
          })),
        },
      });
      go(`#/experiments/${encodeURIComponent(form.name)}`);
    } catch (exc) {
      setRefusal(exc);
    } finally {
      setBusy(false);
    }
  }
  return html`<${Page} title=${t("experiments.create")}>
    <form class="form" onSubmit=${submit} novalidate>
      <${FormError} error=${refusal} shown=${shown} />
      ${touched && Object.keys(problems).length ? html`<div class="banner warn" role="alert">${t("check.fix_fields")}</div>` : null}
      <fieldset class="grid"><legend>${t("experiments.about")}</legend>
        <${Field} label=${t("field.name")} error=${error("name")} hint=${t("check.dns_label")}>
          <input name="name" value=${form.name} autocomplete="off" onInput=${set("name")} /></${Field}>
        <${Field} label=${t("experiments.evaluation")} error=${error("evaluation")}>
          <select name="evaluation" value=${form.evaluation} onChange=${set("evaluation")}>
            <${Options} items=${known.evaluations.map((m) => [m.name, `${m.name}`])} /></select></${Field}>
        <${Field} label=${t("field.cluster")} error=${error("cluster")}>
          <select name="cluster" value=${form.cluster} onChange=${(e) => chooseCluster(e.target.value)}><${Options} items=${known.clusters.map((c) => c.name)} /></select></${Field}>
        <${Field} label=${t("field.namespace")} error=${error("namespace")}>
          <select name="namespace" value=${form.namespace} onChange=${set("namespace")}><${Options} items=${cluster?.namespaces || [form.namespace]} /></select></${Field}>
      </fieldset>
      ${tasks.map((task, i) => html`<${TaskFields} key=${i} task=${task} i=${i} known=${known}
        gpus=${cluster?.gpus || { cpu: 0 }} error=${error}
        onChange=${(next) => setTasks(tasks.map((old, j) => (j === i ? next : old)))}
        onRemove=${tasks.length > 1 ? () => setTasks(tasks.filter((_, j) => j !== i)) : null} />`)}
      <div class="form-actions">
        <button type="button" onClick=${() => setTasks([...tasks, newTask(tasks.length)])}>${t("experiments.add_task")}</button>
        <button type="submit" class="primary" disabled=${busy}>${t("experiments.submit")}</button>
        <a href="#/experiments">${t("common.cancel")}</a>
      </div>
    </form>
  </${Page}>`;
}
