// The console's shell: sign-in, navigation, language switch and the hash router.

import { html, render, useEffect, useState } from "./vendor/preact-htm.js";
import { api, session, ApiError } from "./api.js";
import { loadCatalogues, t, language, setLanguage, LANGUAGES } from "./i18n.js";
import { startLive, stopLive } from "./live.js";
import { Field, FormError } from "./ui.js";
import { DatasetList, DatasetForm, DatasetDetail } from "./pages/datasets.js";
import { GroupList, GroupForm } from "./pages/groups.js";
import { ExperimentList, ExperimentDetail } from "./pages/experiments.js";
import { ExperimentForm } from "./pages/experiment-form.js";
import { ModelList, DeployForm } from "./pages/models.js";
import { ServiceList } from "./pages/services.js";
import { CompareChat } from "./pages/chat.js";
import { EventFeed } from "./pages/events.js";

const ROUTES = [
  [/^\/datasets$/, DatasetList],
  [/^\/datasets\/new$/, DatasetForm],
  [/^\/datasets\/([^/]+)$/, DatasetDetail],
  [/^\/parameter-groups$/, GroupList],
  [/^\/parameter-groups\/new$/, GroupForm],
  [/^\/experiments$/, ExperimentList],
  [/^\/experiments\/new$/, ExperimentForm],
  [/^\/experiments\/([^/]+)$/, ExperimentDetail],
  [/^\/models$/, ModelList],
  [/^\/models\/([^/]+)\/deploy$/, DeployForm],
  [/^\/services$/, ServiceList],
  [/^\/chat$/, CompareChat],
  [/^\/events$/, EventFeed],
];

const NAV = [
  ["datasets", "nav.datasets"],
  ["parameter-groups", "nav.groups"],
  ["experiments", "nav.experiments"],
  ["models", "nav.models"],
  ["services", "nav.services"],
  ["events", "nav.events"],
];

/** "#/experiments/x?tab=y" → { path: "/experiments/x", query: URLSearchParams } */
function currentRoute() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { path: path || "/datasets", query: new URLSearchParams(query || "") };
}

function useRoute() {
  const [route, setRoute] = useState(currentRoute());
  useEffect(() => {
    const update = () => setRoute(currentRoute());
    addEventListener("hashchange", update);
    return () => removeEventListener("hashchange", update);
  }, []);
  return route;
}

function SignIn({ onSignedIn }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    session.signIn(token.trim());
    try {
      onSignedIn(await api("/api/v1/workspace"));
    } catch (exc) {
      session.signOut();
      setError(exc.status === 401 ? new ApiError(401, { error: { message: t("signin.rejected") } }) : exc);
    } finally {
      setBusy(false);
    }
  }
  return html`<main class="signin">
    <form class="card" onSubmit=${submit}>
      <h1>tunelab</h1>
      <p class="muted">${t("signin.intro")}</p>
      <${FormError} error=${error} />
      <${Field} label=${t("signin.token")} hint=${t("signin.token_hint")}>
        <input name="token" type="password" autocomplete="off" required
          value=${token} onInput=${(e) => setToken(e.target.value)} />
      </${Field}>
      <button type="submit" class="primary" disabled=${busy}>${t("signin.submit")}</button>
    </form>
  </main>`;
}

function LanguageSwitch({ onChange }) {
  return html`<select class="language" aria-label=${t("nav.language")} value=${language()}
    onChange=${(e) => onChange(e.target.value)}>
    ${LANGUAGES.map((l) => html`<option value=${l}>${t(`language.${l}`)}</option>`)}
  </select>`;
}

function App() {
  const [workspace, setWorkspace] = useState(undefined);
  const [, setShownLanguage] = useState(language());
  const route = useRoute();

  useEffect(() => {
    if (!session.token) setWorkspace(null);
    else api("/api/v1/workspace").then(setWorkspace, () => setWorkspace(null));
    return session.onSignOut(() => setWorkspace(null));
  }, []);
  useEffect(() => {
    if (workspace) startLive();
    else stopLive();
  }, [workspace]);

  function changeLanguage(value) {
    setLanguage(value);
    setShownLanguage(value); // every label re-renders from the new catalogue
  }
  function signOut() {
    session.signOut();
    setWorkspace(null);
  }

  if (workspace === undefined) return null;
  if (!workspace || route.path === "/signin") {
    return html`<div class="top-right"><${LanguageSwitch} onChange=${changeLanguage} /></div>
      <${SignIn} onSignedIn=${(w) => { setWorkspace(w); location.hash = "#/datasets"; }} />`;
  }
  const found = ROUTES.map(([pattern, view]) => [pattern.exec(route.path), view]).find(([m]) => m);
  let [match, View] = found || [null, null];
  let params = [];
  try {
    params = match ? match.slice(1).map(decodeURIComponent) : [];
  } catch {
    View = null; // a malformed address: not a page
  }
  const section = route.path.split("/")[1];
  return html`<header class="topbar">
      <a class="brand" href="#/datasets">tunelab</a>
      <nav>
        ${NAV.map(([path, key]) => html`<a href=${`#/${path}`}
          class=${section === path || (path === "services" && section === "chat") ? "active" : ""}>${t(key)}</a>`)}
      </nav>
      <span class="workspace" title=${t("nav.workspace")}>${t("nav.workspace")}: <strong>${workspace.name}</strong></span>
      <${LanguageSwitch} onChange=${changeLanguage} />
      <button class="link" onClick=${signOut}>${t("nav.sign_out")}</button>
    </header>
    <main>
      ${View
        ? html`<${View} key=${route.path} params=${params} query=${route.query} />`
        : html`<p>${t("common.not_found")}</p>`}
    </main>`;
}

loadCatalogues().then(() => render(html`<${App} />`, document.getElementById("app")));
