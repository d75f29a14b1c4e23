// Message catalogues (i18n/<language>.json); every label on the page comes from them.

const KEY = "tunelab.language";
export const LANGUAGES = ["en", "zh"];
const catalogues = {};
let current = localStorage.getItem(KEY) || (navigator.language.startsWith("zh") ? "zh" : "en");

export async function loadCatalogues() {
  await Promise.all(
    LANGUAGES.map(async (language) => {
      const response = await fetch(`/console/assets/i18n/${language}.json`);
      catalogues[language] = await response.json();
    }),
  );
  setLanguage(LANGUAGES.includes(current) ? current : "en");
}

export function language() {
  return current;
}

export function setLanguage(value) {
  current = value;
  localStorage.setItem(KEY, value);
  document.documentElement.lang = value === "zh" ? "zh-CN" : "en";
}

/** The message for `key` in the current language, "{name}" placeholders filled in. */
export function t(key, vars = {}) {
  const text = catalogues[current]?.[key] ?? catalogues.en?.[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : ""));
}

export function formatTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(current === "zh" ? "zh-CN" : "en-GB");
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return Number(value).toLocaleString(current === "zh" ? "zh-CN" : "en", {
    maximumFractionDigits: digits,
  });
}
