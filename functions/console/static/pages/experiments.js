// Experiments: the list, and one experiment's tasks with a live loss chart, logs,
// scores against the base model, the best task, and cancel.

import { html, useState, useEffect, useRef } from "../vendor/preact-htm.js";
import { api } from "../api.js";
import { t, formatNumber } from "../i18n.js";
import { useResource, useLive } from "../live.js";
import { Page, Status, Loading, Empty, When, Bar, FormError, FINAL } from "../ui.js";

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

export function ExperimentList() {
  const { data, error } = useResource("/api/v1/experiments", {
    refreshOn: ["experiment.", "task.succeeded", "task.failed", "task.scheduled"],
    moving: (d) => d.items.some((x) => !FINAL.includes(x.status)),
  });
  const actions = html`<a class="button primary" href="#/experiments/new">${t("experiments.create")}</a>`;
  return html`<${Page} title=${t("nav.experiments")} actions=${actions}>
    ${!data ? html`<${Loading} error=${error} />` : !data.items.length
      ? html`<${Empty}>${t("experiments.none")}</${Empty}>`
      : html`<div class="table-wrap"><table class="list" data-testid="experiments">
          <thead><tr><th>${t("field.name")}</th><th>${t("field.status")}</th><th>${t("experiments.tasks")}</th>
            <th>${t("experiments.best")}</th><th>${t("field.created")}</th></tr></thead>
          <tbody>${data.items.map((x) => html`<tr data-name=${x.name}>
            <td><a href=${`#/experiments/${encodeURIComponent(x.name)}`}>${x.name}</a></td>
            <td><${Status} value=${x.status} /></td>
            <td>${x.tasks.map((task) => html`<span class="chip">${task.name}: ${t(`status.${task.status}`)}</span>`)}</td>
            <td>${x.best_task || "—"}</td><td><${When} iso=${x.created_at} /></td>
          </tr>`)}</tbody>
        </table></div>`}
  </${Page}>`;
}

/** Loss per step, a line per task, and a dashed one for its validation loss where
 * training watches one; fed first from the metrics API, then live. */
function LossChart({ experiment, tasks }) {
  const box = useRef(null);
  const chart = useRef(null);
  const series = useRef({});
  const [count, setCount] = useState(0); // points drawn, so the chart redraws as they come
  const valKey = (task) => `${task} · ${t("experiments.val_loss")}`;
  const record = (task, step, loss, valLoss) => {
    if (loss !== null && loss !== undefined) (series.current[task] ||= new Map()).set(step, loss);
    if (valLoss !== null && valLoss !== undefined) {
      const val = (series.current[valKey(task)] ||= new Map());
      // Live events carry the latest validation loss: draw it where it changed.
      if ([...val.values()].at(-1) !== valLoss) val.set(step, valLoss);
    }
  };

  useEffect(() => {
    tasks.forEach((task) =>
      api(`/api/v1/experiments/${encodeURIComponent(experiment)}/tasks/${encodeURIComponent(task)}/metrics`)
        .then((m) => {
          for (const p of m.points) record(task, p.step, p.loss, p.val_loss);
          setCount((c) => c + m.points.length);
        })
        .catch(() => {}),
    );
  }, [experiment, tasks.join()]);
  useLive((event) => {
    const d = event.data;
    if (event.type !== "task.progress" || d.experiment !== experiment) return;
    record(d.task, d.step, d.loss, d.val_loss);
    setCount((c) => c + 1);
  });
  const lines = tasks.flatMap((task, i) => [
    { key: task, colour: COLOURS[i % COLOURS.length] },
    ...(series.current[valKey(task)] ? [{ key: valKey(task), colour: COLOURS[i % COLOURS.length], dash: [6, 4] }] : []),
  ]);
  useEffect(() => {
    const steps = [...new Set(lines.flatMap((line) => [...(series.current[line.key]?.keys() || [])]))].sort((a, b) => a - b);
    const data = [steps, ...lines.map((line) => steps.map((s) => series.current[line.key]?.get(s) ?? null))];
    const width = box.current.clientWidth || 600;
    if (!chart.current || chart.current.series.length !== lines.length + 1) {
      chart.current?.destroy();
      chart.current = new uPlot({
        width, height: 260,
        scales: { x: { time: false } },
        axes: [{ label: t("experiments.step") }, { label: t("experiments.loss") }],
        series: [{ label: t("experiments.step") }, ...lines.map((line) => ({
          label: line.key, stroke: line.colour, width: 2, spanGaps: true, dash: line.dash,
        }))],
      }, data, box.current);
    } else chart.current.setData(data);
  }, [count, tasks.join()]);
  useEffect(() => {
    const observer = new ResizeObserver(() => chart.current?.setSize({ width: box.current.clientWidth, height: 260 }));
    observer.observe(box.current);
    return () => { observer.disconnect(); chart.current?.destroy(); chart.current = null; };
  }, []);
  return html`<div class="panel"><h2>${t("experiments.loss_chart")}</h2>
    <div class="chart" ref=${box} data-testid="loss-chart" data-points=${count} data-lines=${lines.length}></div></div>`;
}

function Logs({ experiment, task, live }) {
  const [text, setText] = useState(null);
  const [open, setOpen] = useState(false);
  const load = () => api(`/api/v1/experiments/${encodeURIComponent(experiment)}/tasks/${encodeURIComponent(task)}/logs`)
    .then(setText, (e) => setText(e.message));
  useEffect(() => {
    if (!open) return undefined;
    load();
    if (!live) return undefined;
    const timer = setInterval(load, 3000);
    return () => clearInterval(timer);
  }, [open, live]);
  return html`<details onToggle=${(e) => setOpen(e.target.open)}>
    <summary>${t("experiments.logs")}</summary>
    <pre class="logs" data-testid=${`logs-${task}`}>${text ?? t("common.loading")}</pre>
  </details>`;
}

function Score({ task }) {
  if (task.score === null || task.score === undefined) return html`<span class="muted">—</span>`;
  const base = task.base_score?.score;
  const delta = base === undefined || base === null ? null : task.score - base;
  return html`<span class="score">${formatNumber(task.score)}
    ${delta === null ? null : html` <small class=${delta >= 0 ? "up" : "down"}>
      (${t("experiments.vs_base", { base: formatNumber(base), delta: `${delta >= 0 ? "+" : ""}${formatNumber(delta)}` })})</small>`}
  </span>`;
}

function TaskCard({ experiment, task, best }) {
  const p = task.progress || {};
  return html`<article class=${best ? "task best" : "task"} data-task=${task.name} data-status=${task.status}>
    <header>
      <h3>${task.name} ${best ? html`<span class="badge">★ ${t("experiments.best")}</span>` : null}</h3>
      <${Status} value=${task.status} />
    </header>
    <dl class="facts">
      <dt>${t("field.base_model")}</dt><dd>${task.base_model}</dd>
      <dt>${t("field.dataset")}</dt><dd>${task.dataset}</dd>
      <dt>${t("field.parameter_group")}</dt><dd>${task.parameter_group}</dd>
      <dt>${t("field.compute")}</dt><dd>${task.compute.gpu_type === "cpu" ? t("experiments.no_gpu") : task.compute.gpu_type} × ${task.compute.gpu_count}</dd>
      <dt>${t("experiments.progress")}</dt><dd>${p.total_steps
        ? html`<${Bar} value=${p.step} max=${p.total_steps}
            label=${t("experiments.step_of", { step: p.step, total: p.total_steps, epoch: formatNumber(p.epoch, 2) })} />`
        : FINAL.includes(task.status) ? "—"
          : html`<progress class="indeterminate" aria-label=${t(`status.${task.status}`)}></progress>`}</dd>
      <dt>${t("experiments.loss")}</dt><dd>${formatNumber(task.metrics?.loss, 4)}</dd>
      ${task.metrics?.val_loss != null ? html`<dt>${t("experiments.val_loss")}</dt><dd>${formatNumber(task.metrics.val_loss, 4)}</dd>` : null}
      <dt>${t("experiments.score")}</dt><dd><${Score} task=${task} /></dd>
      ${task.model ? html`<dt>${t("experiments.model")}</dt><dd><a href="#/models">${task.model}</a></dd>` : null}
    </dl>
    ${task.error ? html`<p class="banner error" role="alert">${task.error.message}</p>` : null}
    <${Logs} experiment=${experiment} task=${task.name} live=${!FINAL.includes(task.status)} />
  </article>`;
}

export function ExperimentDetail({ params: [name] }) {
  const path = `/api/v1/experiments/${encodeURIComponent(name)}`;
  const { data: x, error, reload } = useResource(path, {
    refreshOn: ["task.", "experiment."],
    moving: (d) => !FINAL.includes(d.status),
  });
  const [refusal, setRefusal] = useState(null);
  async function cancel() {
    if (!confirm(t("experiments.confirm_cancel", { name }))) return;
    try {
      await api(`${path}/cancel`, { method: "POST" });
      reload();
    } catch (exc) {
      setRefusal(exc);
    }
  }
  if (!x) return html`<${Page} title=${name}><${Loading} error=${error} /></${Page}>`;
  const actions = FINAL.includes(x.status) ? null
    : html`<button class="danger" onClick=${cancel}>${t("experiments.cancel")}</button>`;
  return html`<${Page} title=${x.name} actions=${actions}>
    <${FormError} error=${refusal} />
    <dl class="facts">
      <dt>${t("field.status")}</dt><dd data-testid="experiment-status"><${Status} value=${x.status} /></dd>
      <dt>${t("experiments.evaluation")}</dt><dd>${x.evaluation}</dd>
      <dt>${t("field.cluster")}</dt><dd>${x.cluster} / ${x.namespace}</dd>
      <dt>${t("experiments.best")}</dt><dd>${x.best_task || "—"}</dd>
      <dt>${t("field.created")}</dt><dd><${When} iso=${x.created_at} /></dd>
    </dl>
    ${x.error ? html`<p class="banner error" role="alert">${x.error.message}</p>` : null}
    <${LossChart} experiment=${x.name} tasks=${x.tasks.map((task) => task.name)} />
    <div class="tasks">${x.tasks.map((task) => html`<${TaskCard} experiment=${x.name} task=${task}
      best=${x.best_task === task.name} />`)}</div>
  </${Page}>`;
}
