// consulate's web UI: one module, no build step, no dependencies. Every view is made of
// calls to the agent's public HTTP API (the same a user could make, `?dc=` for other DCs,
// blocking queries for live updates). Data is only ever put in the page as text
// (`textContent`, form values), never parsed as HTML. The ACL token, when one is set, is
// kept in this tab's session storage and sent as `X-Consul-Token`.

const TOKEN_KEY = "consulate.token";
const main = document.getElementById("main");
const banner = document.getElementById("banner");
const dcSelect = document.getElementById("dc");
const nav = document.getElementById("nav");

/** An element: `h("a", {href: "#/"}, "text", child)`; strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An answer of the API that is not a success: its status and Consul's message. */
class ApiError extends Error {
  constructor(status, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
  }
}

/** One API call: `{data, index}`; `dc`, query `params`, `method`, `body`, `signal`. */
async function api(path, { dc, params = {}, method = "GET", body, signal } = {}) {
  const url = new URL("/v1/" + path, location.origin);
  if (dc) url.searchParams.set("dc", dc);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) url.searchParams.set(k, v);
  }
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["X-Consul-Token"] = token;
  const res = await fetch(url, { method, headers, body, signal });
  const text = await res.text();
  if (!res.ok) {
    if (res.status === 403) askToken(text.trim());
    throw new ApiError(res.status, text.trim());
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  return { data, index: res.headers.get("X-Consul-Index") };
}

/**
 * Calls `render(data)` with the answer of `path` now and after every change, through
 * blocking queries, until `signal` aborts. A failure is shown by `failed(error)` and the
 * query is asked again a little later.
 */
async function watch(path, opts, signal, render, failed) {
  let index;
  while (!signal.aborted) {
    try {
      const params = { ...(opts.params || {}) };
      if (index) Object.assign(params, { index, wait: "5m" });
      const res = await api(path, { ...opts, params, signal });
      if (signal.aborted) return;
      if (res.index !== index || index === undefined) render(res.data);
      index = res.index && Number(res.index) > 0 ? res.index : undefined;
      if (!index) await sleep(2000, signal);
    } catch (e) {
      if (signal.aborted) return;
      if (failed) failed(e);
      index = undefined;
      await sleep(3000, signal);
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** The route the URL names: `#/<dc>/<page>/<rest>?<query>`. */
function route() {
  const [path, qs] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/");
  return {
    dc: decodeURIComponent(parts[0] || ""),
    page: parts[1] || "overview",
    rest: parts.slice(2).map(decodeURIComponent).join("/"),
    query: new URLSearchParams(qs || ""),
  };
}

/** A slash-separated name (a KV key, a folder) with each segment URL-encoded. */
function segments(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

function link(dc, page, rest = "", query) {
  let out = `#/${encodeURIComponent(dc)}/${page}`;
  if (rest) out += "/" + segments(rest);
  const q = query?.toString();
  return q ? `${out}?${q}` : out;
}

const PAGES = [
  ["overview", "Overview"],
  ["services", "Services"],
  ["nodes", "Nodes"],
  ["kv", "Key/Value"],
  ["sessions", "Sessions"],
  ["members", "Members"],
];

let datacenters = [];
let localDc = "";
let agentIsServer = false;
let current = new AbortController();

async function start() {
  document.getElementById("token").addEventListener("click", () => askToken());
  dcSelect.addEventListener("change", () => {
    const r = route();
    location.hash = link(dcSelect.value, r.page === "kv-edit" ? "kv" : r.page, r.page === "services" ? r.rest : "");
  });
  window.addEventListener("hashchange", show);
  try {
    datacenters = (await api("catalog/datacenters")).data || [];
  } catch (e) {
    datacenters = [];
  }
  try {
    const config = (await api("agent/self")).data?.Config || {};
    localDc = config.Datacenter || "";
    agentIsServer = config.Server === true;
  } catch {
    localDc = "";
  }
  localDc = localDc || datacenters[0] || "";
  show();
}

/** Renders the page the URL names, stopping the live updates of the previous one. */
function show() {
  const r = route();
  if (!r.dc) {
    location.replace(link(localDc, "overview"));
    return;
  }
  current.abort();
  current = new AbortController();
  dcSelect.replaceChildren(
    ...[...new Set([...datacenters, r.dc])].map((d) => h("option", { value: d, selected: d === r.dc }, d)),
  );
  nav.replaceChildren(
    ...PAGES.map(([page, label]) =>
      h("a", { href: link(r.dc, page), class: r.page.startsWith(page) ? "active" : "" }, label),
    ),
  );
  const view = VIEWS[r.page] || notFound;
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  document.title = `consulate · ${r.page} · ${r.dc}`;
  // A view left for another fails with an AbortError: only the view on screen reports.
  const signal = current.signal;
  view(r, signal).catch((e) => {
    if (!signal.aborted) main.replaceChildren(failure(e));
  });
}

function failure(e) {
  return h("div", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.status}: ${e.message}` : String(e));
}

function notFound(r) {
  main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, `No page "${r.page}".`));
  return Promise.resolve();
}

/** The token form, with why it is asked for (a 403's message) when there is one. */
function askToken(why) {
  if (!banner.hidden) {
    // Already asking: say why again, but keep what is being typed.
    const reason = banner.querySelector(".why");
    if (reason && why) reason.textContent = why;
    return;
  }
  banner.hidden = false;
  const input = h("input", { type: "password", placeholder: "SecretID", autocomplete: "off", "aria-label": "ACL token" });
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  banner.replaceChildren(
    h(
      "form",
      {
        onsubmit: (ev) => {
          ev.preventDefault();
          if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
          else sessionStorage.removeItem(TOKEN_KEY);
          banner.hidden = true;
          show();
        },
      },
      h("span", { class: "why" }, why || ""),
      input,
      h("button", { type: "submit" }, "Use token"),
      h("button", { type: "button", onclick: () => (banner.hidden = true) }, "Close"),
    ),
  );
}

const STATUSES = ["passing", "warning", "critical"];

function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

/** Counts as a small bar of passing / warning / critical. */
function counts([p, w, c]) {
  return h(
    "span",
    { class: "counts" },
    h("span", { class: "passing", title: "passing" }, `✔ ${p}`),
    h("span", { class: "warning", title: "warning" }, `! ${w}`),
    h("span", { class: "critical", title: "critical" }, `✖ ${c}`),
  );
}

function table(headers, rows, empty = "Nothing here.") {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h(
    "div",
    { class: "scroll" },
    h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
  );
}

function worst(checks) {
  let rank = 0;
  for (const c of checks) rank = Math.max(rank, STATUSES.indexOf(c.Status));
  return STATUSES[Math.max(rank, 0)];
}

// ---- Overview: every DC with its reachability, leader, servers, RTT and services.

async function overview(r, signal) {
  const grid = h("div", { class: "cards" });
  main.replaceChildren(h("h1", {}, "Federation"), grid);
  const card = async (dc) => {
    try {
      // The round trip of the smallest question to the DC's leader, through this agent.
      const started = performance.now();
      const leader = await api("status/leader", { dc, signal });
      const rtt = performance.now() - started;
      const [peers, services] = await Promise.all([
        api("status/peers", { dc, signal }),
        api("internal/ui/services", { dc, signal }),
      ]);
      const byHealth = [0, 0, 0];
      for (const s of services.data) {
        byHealth[s.InstancesCritical > 0 ? 2 : s.InstancesWarning > 0 ? 1 : 0] += 1;
      }
      return h(
        "section",
        { class: "card", "data-dc": dc },
        h("h2", {}, h("a", { href: link(dc, "services") }, dc), dc === localDc ? h("span", { class: "tag" }, "local") : null),
        h(
          "dl",
          {},
          h("dt", {}, "Status"),
          h("dd", {}, h("span", { class: "badge passing" }, "reachable")),
          h("dt", {}, "Leader"),
          h("dd", { class: "leader" }, leader.data || "none"),
          h("dt", {}, "Servers"),
          h("dd", {}, String(peers.data.length)),
          h("dt", { title: "how long asking its leader through this agent took" }, "RTT from here"),
          h("dd", {}, `${rtt.toFixed(1)} ms`),
          h("dt", {}, "Services"),
          h("dd", {}, `${services.data.length} `, counts(byHealth)),
        ),
      );
    } catch (e) {
      if (signal.aborted) throw e;
      return h(
        "section",
        { class: "card down", "data-dc": dc },
        h("h2", {}, dc),
        h("dl", {}, h("dt", {}, "Status"), h("dd", {}, h("span", { class: "badge critical" }, "unreachable")), h("dt", {}, "Why"), h("dd", {}, e.message)),
      );
    }
  };
  while (!signal.aborted) {
    try {
      datacenters = (await api("catalog/datacenters", { signal })).data || datacenters;
    } catch (e) {
      if (signal.aborted) return;
    }
    const cards = await Promise.all(datacenters.map(card));
    if (signal.aborted) return;
    grid.replaceChildren(...cards);
    await sleep(5000, signal);
  }
}

// ---- Services of a DC, with a filter by name and tag.

async function services(r, signal) {
  if (r.rest) return service(r, signal);
  const name = h("input", { type: "search", placeholder: "name", value: r.query.get("name") || "", "aria-label": "filter by name" });
  const tag = h("input", { type: "search", placeholder: "tag", value: r.query.get("tag") || "", "aria-label": "filter by tag" });
  const body = h("div");
  let last = [];
  const render = () => {
    const n = name.value.trim().toLowerCase();
    const t = tag.value.trim().toLowerCase();
    const rows = last
      .filter((s) => !n || s.Name.toLowerCase().includes(n))
      .filter((s) => !t || s.Tags.some((x) => x.toLowerCase().includes(t)))
      .map((s) =>
        h(
          "tr",
          { "data-service": s.Name },
          h("td", {}, h("a", { href: link(r.dc, "services", s.Name) }, s.Name)),
          h("td", {}, s.Tags.map((x) => h("span", { class: "tag" }, x))),
          h("td", { class: "num" }, String(s.InstanceCount)),
          h("td", {}, counts([s.InstancesPassing, s.InstancesWarning, s.InstancesCritical])),
          h("td", { class: "num" }, String(s.Nodes.length)),
        ),
      );
    body.replaceChildren(table(["Service", "Tags", "Instances", "Instance health", "Nodes"], rows, "No services match."));
  };
  const refilter = () => {
    const q = new URLSearchParams();
    if (name.value) q.set("name", name.value);
    if (tag.value) q.set("tag", tag.value);
    history.replaceState(null, "", link(r.dc, "services", "", q));
    render();
  };
  name.addEventListener("input", refilter);
  tag.addEventListener("input", refilter);
  main.replaceChildren(h("h1", {}, `Services in ${r.dc}`), h("div", { class: "filters" }, name, tag), body);
  await watch("internal/ui/services", { dc: r.dc }, signal, (data) => {
    last = data || [];
    render();
  }, (e) => body.replaceChildren(failure(e)));
}

/** One service's instances in every DC, each with its checks, kept live. */
async function service(r, signal) {
  const name = r.rest;
  const order = [r.dc, ...datacenters.filter((d) => d !== r.dc)];
  const sections = order.map((dc) => h("section", { class: "dc-instances", "data-dc": dc }, h("h2", {}, dc), h("p", { class: "muted" }, "Loading…")));
  main.replaceChildren(h("h1", {}, name), h("p", { class: "muted" }, "Instances in every datacenter, live."), ...sections);
  await Promise.all(
    order.map((dc, i) =>
      watch(
        `health/service/${encodeURIComponent(name)}`,
        { dc },
        signal,
        (data) => {
          const rows = (data || []).map((e) =>
            h(
              "tr",
              { "data-instance": e.Service.ID, "data-status": worst(e.Checks) },
              h("td", {}, h("a", { href: link(dc, "nodes", e.Node.Node) }, e.Node.Node)),
              h("td", {}, `${e.Service.Address || e.Node.Address}:${e.Service.Port}`),
              h("td", {}, e.Service.Tags.map((x) => h("span", { class: "tag" }, x))),
              h("td", {}, badge(worst(e.Checks))),
              h(
                "td",
                {},
                h(
                  "ul",
                  { class: "checks" },
                  e.Checks.map((c) => h("li", {}, badge(c.Status), " ", c.Name, c.Output ? h("pre", {}, c.Output) : null)),
                ),
              ),
            ),
          );
          sections[i].replaceChildren(h("h2", {}, dc), table(["Node", "Address", "Tags", "Health", "Checks"], rows, `No instances of ${name} in ${dc}.`));
        },
        (e) => sections[i].replaceChildren(h("h2", {}, dc), failure(e)),
      ),
    ),
  );
}

// ---- Nodes with their checks.

async function nodes(r, signal) {
  if (r.rest) return node(r, signal);
  const body = h("div");
  main.replaceChildren(h("h1", {}, `Nodes in ${r.dc}`), body);
  let nodeList = [];
  let checks = [];
  const render = () => {
    const byNode = new Map();
    for (const c of checks) {
      if (!byNode.has(c.Node)) byNode.set(c.Node, []);
      byNode.get(c.Node).push(c);
    }
    const rows = nodeList.map((n) => {
      const own = byNode.get(n.Node) || [];
      return h(
        "tr",
        { "data-node": n.Node },
        h("td", {}, h("a", { href: link(r.dc, "nodes", n.Node) }, n.Node)),
        h("td", {}, n.Address),
        h("td", {}, badge(worst(own.filter((c) => !c.ServiceID)))),
        h("td", {}, counts(STATUSES.map((s) => own.filter((c) => c.Status === s).length))),
      );
    });
    body.replaceChildren(table(["Node", "Address", "Node health", "All checks"], rows, "No nodes."));
  };
  const failed = (e) => body.replaceChildren(failure(e));
  await Promise.all([
    watch("catalog/nodes", { dc: r.dc }, signal, (d) => ((nodeList = d || []), render()), failed),
    watch("health/state/any", { dc: r.dc }, signal, (d) => ((checks = d || []), render()), failed),
  ]);
}

async function node(r, signal) {
  const name = r.rest;
  const checks = h("div");
  const svc = h("div");
  main.replaceChildren(h("h1", {}, name), h("h2", {}, "Checks"), checks, h("h2", {}, "Services"), svc);
  await Promise.all([
    watch(`health/node/${encodeURIComponent(name)}`, { dc: r.dc }, signal, (d) => {
      const rows = (d || []).map((c) =>
        h("tr", {}, h("td", {}, c.Name), h("td", {}, c.ServiceName || "(node)"), h("td", {}, badge(c.Status)), h("td", {}, h("pre", {}, c.Output || ""))),
      );
      checks.replaceChildren(table(["Check", "Service", "Status", "Output"], rows, "No checks."));
    }, (e) => checks.replaceChildren(failure(e))),
    watch(`catalog/node-services/${encodeURIComponent(name)}`, { dc: r.dc }, signal, (d) => {
      const rows = (d?.Services || []).map((s) =>
        h("tr", {}, h("td", {}, h("a", { href: link(r.dc, "services", s.Service) }, s.Service)), h("td", {}, s.ID), h("td", {}, String(s.Port)), h("td", {}, s.Tags.map((x) => h("span", { class: "tag" }, x)))),
      );
      svc.replaceChildren(table(["Service", "ID", "Port", "Tags"], rows, "No services."));
    }, (e) => svc.replaceChildren(failure(e))),
  ]);
}

// ---- Key/value: folders, view, create, edit with check-and-set, delete.

function decodeValue(b64) {
  if (!b64) return "";
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function crumbs(dc, prefix) {
  const parts = prefix.split("/").filter(Boolean);
  const out = [h("a", { href: link(dc, "kv") }, "(root)")];
  let at = "";
  for (const p of parts) {
    at += p + "/";
    out.push(" / ", h("a", { href: link(dc, "kv", at) }, p));
  }
  return h("nav", { class: "crumbs" }, out);
}

async function kv(r, signal) {
  const prefix = r.rest && !r.rest.endsWith("/") ? r.rest + "/" : r.rest;
  const list = h("div");
  const key = h("input", { type: "text", placeholder: "new key name (a/b for folders)", "aria-label": "new key name", name: "key" });
  const value = h("textarea", { rows: 3, placeholder: "value", "aria-label": "new key value", name: "value" });
  const status = h("p", { class: "status", role: "status" });
  const create = h(
    "form",
    {
      class: "create",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const full = prefix + key.value.trim();
        if (!key.value.trim()) return;
        try {
          const res = await api(`kv/${segments(full)}`, { dc: r.dc, method: "PUT", params: { cas: 0 }, body: value.value });
          if (res.data === true) location.hash = link(r.dc, "kv-edit", full);
          else status.textContent = `${full} already exists: open it to edit it.`;
        } catch (e) {
          status.replaceChildren(failure(e));
        }
      },
    },
    h("h2", {}, "Create"),
    key,
    value,
    h("button", { type: "submit" }, "Create"),
    status,
  );
  main.replaceChildren(h("h1", {}, "Key/Value"), crumbs(r.dc, prefix), list, create);
  await watch(`kv/${segments(prefix)}`, { dc: r.dc, params: { keys: "", separator: "/" } }, signal, (keys) => {
    const rows = (keys || [])
      .filter((k) => k !== prefix)
      .map((k) => {
        const folder = k.endsWith("/");
        return h(
          "tr",
          { "data-key": k },
          h("td", {}, h("a", { href: link(r.dc, folder ? "kv" : "kv-edit", k) }, folder ? `📁 ${k.slice(prefix.length)}` : k.slice(prefix.length))),
          h("td", {}, folder ? "folder" : "key"),
        );
      });
    list.replaceChildren(table(["Key", "Kind"], rows, "This folder is empty."));
  }, (e) => list.replaceChildren(e.status === 404 ? h("p", { class: "muted" }, "This folder is empty.") : failure(e)));
}

async function kvEdit(r, signal) {
  const keyName = r.rest;
  const path = `kv/${segments(keyName)}`;
  const parent = keyName.includes("/") ? keyName.slice(0, keyName.lastIndexOf("/") + 1) : "";
  const res = await api(path, { dc: r.dc, signal });
  const entry = res.data[0];
  let modify = entry.ModifyIndex;
  const value = h("textarea", { rows: 12, "aria-label": "value", name: "value" });
  value.value = decodeValue(entry.Value);
  const shown = h("pre", { class: "value", "aria-label": "value as stored" }, value.value);
  const meta = h("p", { class: "muted" });
  const status = h("p", { class: "status", role: "status" });
  const describe = (e) => {
    meta.textContent = `ModifyIndex ${e.ModifyIndex} · Flags ${e.Flags}${e.Session ? ` · locked by session ${e.Session}` : ""}`;
  };
  describe(entry);
  const save = async (ev) => {
    ev.preventDefault();
    try {
      const put = await api(path, { dc: r.dc, method: "PUT", params: { cas: modify }, body: value.value });
      if (put.data === true) {
        const fresh = (await api(path, { dc: r.dc })).data[0];
        modify = fresh.ModifyIndex;
        shown.textContent = decodeValue(fresh.Value);
        describe(fresh);
        status.textContent = "Saved.";
      } else {
        status.textContent = `Not saved: someone else changed ${keyName} since you loaded it (you had index ${modify}). Reload to see their value.`;
        status.className = "status error";
      }
    } catch (e) {
      status.replaceChildren(failure(e));
    }
  };
  const remove = async () => {
    if (!confirm(`Delete ${keyName}?`)) return;
    try {
      const del = await api(path, { dc: r.dc, method: "DELETE", params: { cas: modify } });
      if (del.data === true) location.hash = link(r.dc, "kv", parent);
      else status.textContent = `Not deleted: someone else changed ${keyName} since you loaded it. Reload first.`;
    } catch (e) {
      status.replaceChildren(failure(e));
    }
  };
  main.replaceChildren(
    h("h1", {}, keyName),
    crumbs(r.dc, parent),
    meta,
    h("h2", {}, "Stored value"),
    shown,
    h("form", { onsubmit: save, class: "edit" }, h("h2", {}, "Edit"), value, h("div", { class: "buttons" }, h("button", { type: "submit" }, "Save"), h("button", { type: "button", class: "danger", onclick: remove }, "Delete"))),
    status,
  );
}

// ---- Sessions and the locks they hold.

async function sessions(r, signal) {
  const body = h("div");
  main.replaceChildren(h("h1", {}, `Sessions in ${r.dc}`), body);
  await watch("session/list", { dc: r.dc }, signal, async (list) => {
    let held = [];
    try {
      held = ((await api("kv/", { dc: r.dc, params: { recurse: "" }, signal })).data || []).filter((e) => e.Session);
    } catch {
      held = [];
    }
    const rows = (list || []).map((s) =>
      h(
        "tr",
        { "data-session": s.ID },
        h("td", {}, h("code", {}, s.ID)),
        h("td", {}, s.Name),
        h("td", {}, h("a", { href: link(r.dc, "nodes", s.Node) }, s.Node)),
        h("td", {}, s.Behavior),
        h("td", {}, s.TTL || "-"),
        h("td", {}, held.filter((e) => e.Session === s.ID).map((e) => h("a", { class: "tag", href: link(r.dc, "kv-edit", e.Key) }, e.Key))),
      ),
    );
    body.replaceChildren(table(["ID", "Name", "Node", "Behavior", "TTL", "Locks held"], rows, "No sessions."));
  }, (e) => body.replaceChildren(failure(e)));
}

// ---- This agent's members.

async function members(r, signal) {
  const lan = h("div");
  const wan = h("div");
  main.replaceChildren(h("h1", {}, "Members (as this agent sees them)"), h("h2", {}, "LAN"), lan, h("h2", {}, "WAN (servers of every DC)"), wan);
  const rows = (list) =>
    (list || []).map((m) =>
      h("tr", { "data-member": m.Name }, h("td", {}, m.Name), h("td", {}, `${m.Addr}:${m.Port}`), h("td", {}, m.Tags?.dc || ""), h("td", {}, m.Tags?.role || ""), h("td", {}, badge(m.Status === 1 ? "passing" : m.Status === 4 ? "critical" : "warning"), " ", ["none", "alive", "leaving", "left", "failed"][m.Status] || String(m.Status))),
    );
  while (!signal.aborted) {
    try {
      lan.replaceChildren(table(["Name", "Address", "DC", "Role", "Status"], rows((await api("agent/members", { signal })).data)));
    } catch (e) {
      if (signal.aborted) return;
      lan.replaceChildren(failure(e));
    }
    if (!agentIsServer) {
      wan.replaceChildren(h("p", { class: "muted" }, "This agent is a client: only servers are in the WAN pool."));
    } else {
      try {
        wan.replaceChildren(table(["Name", "Address", "DC", "Role", "Status"], rows((await api("agent/members", { params: { wan: 1 }, signal })).data)));
      } catch (e) {
        if (signal.aborted) return;
        wan.replaceChildren(failure(e));
      }
    }
    await sleep(3000, signal);
  }
}

const VIEWS = { overview, services, nodes, kv, "kv-edit": kvEdit, sessions, members };

start();
