// A live feed of the workspace's events: the latest from the list API, then each new one
// as the stream delivers it.

import { html, useState, useEffect } from "../vendor/preact-htm.js";
import { api } from "../api.js";
import { t } from "../i18n.js";
import { useLive } from "../live.js";
import { Page, Loading, Empty, When } from "../ui.js";

const KEEP = 300;

function summary(data) {
  const text = JSON.stringify(data);
  return text.length > 240 ? `${text.slice(0, 240)}…` : text;
}

export function EventFeed() {
  const [events, setEvents] = useState(null);
  const [error, setError] = useState(null);
  const [filter, setFilter] = useState("");
  useEffect(() => {
    api("/api/v1/events?limit=100").then((d) => setEvents((live) => {
      const seen = new Set((live || []).map((e) => e.id));
      return [...(live || []), ...d.items.filter((e) => !seen.has(e.id))].slice(0, KEEP);
    }), setError);
  }, []);
  useLive((event) => setEvents((old) => [event, ...(old || []).filter((e) => e.id !== event.id)].slice(0, KEEP)));
  const shown = (events || []).filter((e) => !filter || e.type.includes(filter) || (e.subject || "").includes(filter));
  return html`<${Page} title=${t("nav.events")}
      actions=${html`<input type="search" placeholder=${t("events.filter")} aria-label=${t("events.filter")}
        value=${filter} onInput=${(e) => setFilter(e.target.value)} />`}>
    <p class="muted"><span class="live-dot"></span> ${t("events.live")}</p>
    ${!events ? html`<${Loading} error=${error} />` : !shown.length
      ? html`<${Empty}>${t("events.none")}</${Empty}>`
      : html`<div class="table-wrap"><table class="list events" data-testid="events">
          <thead><tr><th>${t("events.time")}</th><th>${t("events.type")}</th><th>${t("events.subject")}</th><th>${t("events.data")}</th></tr></thead>
          <tbody>${shown.map((e) => html`<tr data-type=${e.type}>
            <td><${When} iso=${e.time} /></td><td><code>${e.type}</code></td><td>${e.subject}</td>
            <td><code class="data">${summary(e.data)}</code></td>
          </tr>`)}</tbody>
        </table></div>`}
  </${Page}>`;
}
