// common.js: the helpers of the dashboard's pages, spliced into
// each page's script where it says /*common.js*/ (withCommon), so that the
// page's strict CSP hashes them with it. They read the page's `base`, its
// root under a proxy's prefix, when called. Every string from the API goes
// in as text (textContent, encodeURIComponent), never as markup.
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
const SVG = "http://www.w3.org/2000/svg";
// svgEl makes an SVG element, its attributes set one by one (the strict
// CSP may refuse inline styles; attributes and classes it does not).
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
// dur spells a duration that may run to days: 1.25 s, 12.3 s, 5 min 03 s,
// 2 h 05 min, 3 d 4 h.
function dur(ms) {
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 60) return s.toFixed(1) + " s";
  const pad = (n) => String(n).padStart(2, "0");
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + pad(Math.floor(s % 60)) + " s";
  const h = Math.floor(m / 60);
  if (h < 48) return h + " h " + pad(m % 60) + " min";
  return Math.floor(h / 24) + " d " + (h % 24) + " h";
}
// num is a score or a metric to three decimals, "–" for none.
function num(v) { return v === undefined || v === null ? "–" : (Math.round(v * 1000) / 1000).toString(); }
// The eval queue of a pool (tasks.Queues): an eval's task is there, by its
// eval ID, NAME/KEY for a run's.
function evalsQueue(pool) { return !pool || pool === "default" ? "evals" : "evals:" + pool; }
function taskHref(pool, evalID) {
  return base + "monitoring/queues/" + encodeURIComponent(evalsQueue(pool)) + "/tasks/" + encodeURIComponent(evalID);
}
// getJSON reads the API; an error says the path, the status and the
// API's own words, and carries the status.
async function getJSON(path) {
  const r = await fetch(base + path, { cache: "no-store" });
  if (!r.ok) {
    let msg = r.status + "";
    try { msg += " " + (await r.json()).error; } catch (e) { /* not JSON */ }
    const err = new Error(path.split("?")[0] + ": " + msg);
    err.status = r.status;
    throw err;
  }
  return r.json();
}
function text(id, v) { document.getElementById(id).textContent = v; }
function showError(err) { document.getElementById("error").textContent = err ? "refresh failed: " + err.message : ""; }
