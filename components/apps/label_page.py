"""The ranking page served by ``rlhf label`` (components/apps/label.py): one HTML document, no build step.

A labeler sees one prompt and its K answers (in an order the server seeds per labeler), puts the
best on top by dragging (HTML5 drag and drop) or with keys (1-9 select, arrow keys move), marks ties
with the sign between two answers ("D > C > A = B"), and submits; or skips, or flags the item.
All text from the queue is set with textContent, never parsed as HTML. ``AB_PAGE`` (below) is the blind A/B page.
"""

# What both pages share: the header with the labeler and the progress bar, the prompt's style, the JSON
# calls (an error body's message becomes the exception's), and the start (labeler from ?labeler=, load()).
STYLE_HEADER = r"""body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f6f8;color:#1f2933}
header{display:flex;align-items:center;gap:1.2em;padding:.7em 1.4em;background:#263238;color:#eceff1}
header h1{font-size:1.1em;margin:0;flex:1;font-weight:600}
header input{font:inherit;padding:.15em .4em;border-radius:4px;border:1px solid #90a4ae;width:9em}
#bar{width:180px;height:8px;background:#455a64;border-radius:4px;overflow:hidden}
#bar>div{height:100%;width:0;background:#9ccc65;transition:width .3s}"""
STYLE_TEXT = r""".label{color:#607d8b;font-size:.8em;text-transform:uppercase;letter-spacing:.05em;margin:.2em 0}
.prompt{background:#fff;border-left:4px solid #1976d2;padding:.8em 1em;white-space:pre-wrap;border-radius:4px;
  box-shadow:0 1px 2px #0001;font-size:1.05em}
.help{color:#52606d;font-size:.85em;margin:.9em 0}
kbd{background:#fff;border:1px solid #cbd2d9;border-bottom-width:2px;border-radius:3px;padding:0 .3em;font-size:.9em}"""
JS_API = r"""function say(text, cls) { $("msg").textContent = text; $("msg").className = cls || ""; }

async function api(path, body) {
  const init = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({error: `${r.status} ${r.statusText}`}));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}"""
JS_START = r"""$("labeler").value = labeler;
$("labeler").onchange = () => {
  labeler = $("labeler").value.trim();
  skipped = [];
  history.replaceState(null, "", `?labeler=${encodeURIComponent(labeler)}`);
  say("", "");
  load().catch(err => say(err.message, "err"));
};
load().catch(err => say(err.message, "err"));"""


def _page(html: str) -> str:
    return (html.replace("__STYLE_HEADER__", STYLE_HEADER).replace("__STYLE_TEXT__", STYLE_TEXT)
            .replace("__JS_API__", JS_API).replace("__JS_START__", JS_START))


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Rank the answers</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
__STYLE_HEADER__
main{max-width:880px;margin:1.4em auto;padding:0 1em}
__STYLE_TEXT__
ol#cards{list-style:none;padding:0;margin:0}
.card{display:flex;gap:.8em;align-items:flex-start;background:#fff;border:2px solid #d9e2ec;border-radius:6px;
  padding:.6em .8em;cursor:grab;box-shadow:0 1px 2px #0001}
.card.sel{border-color:#1976d2;box-shadow:0 0 0 3px #bbdefb}
.card.over{border-style:dashed;border-color:#1976d2}
.pos{color:#9aa5b1;min-width:1.1em;text-align:right;font-variant-numeric:tabular-nums}
.letter{font-weight:700;background:#e3f2fd;color:#0d47a1;border-radius:50%;width:1.8em;height:1.8em;flex:none;
  display:flex;align-items:center;justify-content:center}
.text{white-space:pre-wrap;flex:1;overflow-wrap:anywhere;line-height:1.4}
li.gap{display:flex;justify-content:center;margin:.25em 0}
.gap button{font:inherit;font-weight:700;width:3.4em;border:1px solid #bcccdc;background:#fff;border-radius:12px;
  cursor:pointer;color:#52606d}
.gap button.tie{background:#ffe082;border-color:#ffb300;color:#5d4037}
.summary{font-size:1.1em;margin:1em 0}
.actions{display:flex;gap:.6em;align-items:center;flex-wrap:wrap}
.actions button,.actions select,.actions input{font:inherit;padding:.35em .8em;border-radius:4px;border:1px solid #bcccdc;background:#fff}
.actions button.primary{background:#1976d2;color:#fff;border-color:#1976d2;padding:.45em 1.3em}
.actions button:disabled{opacity:.5}
.flagbox{margin-left:auto;color:#52606d}
#msg{margin:.8em 0;min-height:1.3em}
.err{color:#c62828;font-weight:600}.ok{color:#2e7d32}
#empty{background:#fff;padding:2em;text-align:center;border-radius:6px;font-size:1.1em}
</style></head>
<body>
<header><h1>Rank the answers</h1>
  <label>Labeler <input id="labeler" autocomplete="off"></label>
  <span id="progress"></span><div id="bar"><div></div></div>
</header>
<main>
  <div id="empty" hidden></div>
  <section id="task" hidden>
    <div class="label">Prompt <span id="ptype"></span></div>
    <div class="prompt" id="prompt"></div>
    <p class="help">Put the best answer on top. Drag an answer, or press <kbd>1</kbd>-<kbd>9</kbd> to select one
      and <kbd>&uarr;</kbd> <kbd>&darr;</kbd> to move it. <kbd>=</kbd> ties the selected answer with the one below it
      (or click the sign between two answers). <kbd>Enter</kbd> submits, <kbd>S</kbd> skips.</p>
    <ol id="cards"></ol>
    <div class="summary">Your ranking: <b id="summary"></b></div>
    <div class="actions">
      <button class="primary" id="submit">Submit ranking</button>
      <button id="skip">Skip</button>
      <span class="flagbox">Flag as <select id="flag"><option>unsafe</option><option>nonsense</option>
        <option>other</option></select> <input id="note" placeholder="note (optional)" size="16">
        <button id="flagbtn">Flag</button></span>
    </div>
    <div id="msg"></div>
  </section>
</main>
<script>
const LETTERS = "ABCDEFGHI";
let labeler = new URLSearchParams(location.search).get("labeler") || __LABELER__;
let item = null, order = [], ties = [], sel = null, skipped = [], dragFrom = null, busy = false;
const $ = id => document.getElementById(id);

__JS_API__

function showProgress(p) {
  $("progress").textContent = `${p.done} done \u00b7 ${p.remaining} remaining`;
  $("bar").firstElementChild.style.width = (p.total ? 100 * p.done / p.total : 0) + "%";
}

async function load() {
  sel = null;
  const q = `labeler=${encodeURIComponent(labeler)}&skip=${encodeURIComponent(skipped.join(","))}`;
  const d = await api(`/api/next?${q}`);
  showProgress(d);
  item = d.item;
  $("task").hidden = !item;
  $("empty").hidden = !!item;
  if (!item) {
    $("empty").textContent = d.skipped ? `Only ${d.skipped} skipped item(s) left: reload the page to see them again.`
                                       : "All done, thank you! Nothing left to rank.";
    return;
  }
  order = item.answers.map((_, i) => i);
  ties = order.slice(1).map(() => false);
  $("prompt").textContent = item.prompt;
  $("ptype").textContent = item.prompt_type ? `(${item.prompt_type})` : "";
  render();
}

function ranks() {  // rank of each shown position: 0 = best; a tie keeps the rank of the answer above
  const r = [];
  let k = 0;
  order.forEach((_, p) => { r.push(k); if (p < ties.length && !ties[p]) k++; });
  return r;
}

function move(from, to) {
  const [a] = order.splice(from, 1);
  order.splice(to, 0, a);
  sel = to;
  render();
}

function render() {
  const ol = $("cards");
  ol.replaceChildren();
  order.forEach((a, p) => {
    const li = document.createElement("li");
    li.className = "card" + (sel === p ? " sel" : "");
    li.id = "card-" + p;
    li.draggable = true;
    li.dataset.letter = LETTERS[a];
    for (const [cls, text] of [["pos", p + 1], ["letter", LETTERS[a]], ["text", item.answers[a]]]) {
      const s = document.createElement("span");
      s.className = cls;
      s.textContent = text;
      li.append(s);
    }
    li.onclick = () => { sel = p; render(); };
    li.ondragstart = e => { dragFrom = p; e.dataTransfer.effectAllowed = "move"; e.dataTransfer.setData("text/plain", String(p)); };
    li.ondragover = e => { e.preventDefault(); li.classList.add("over"); };
    li.ondragleave = () => li.classList.remove("over");
    li.ondrop = e => { e.preventDefault(); move(dragFrom ?? +e.dataTransfer.getData("text/plain"), p); dragFrom = null; };
    ol.append(li);
    if (p < ties.length) {
      const g = document.createElement("li"), b = document.createElement("button");
      g.className = "gap";
      b.id = "gap-" + p;
      b.className = ties[p] ? "tie" : "";
      b.textContent = ties[p] ? "=" : ">";
      b.title = ties[p] ? "tied: click to rank the upper answer better" : "click to tie these two answers";
      b.onclick = () => { ties[p] = !ties[p]; render(); };
      g.append(b);
      ol.append(g);
    }
  });
  $("summary").textContent = order.map((a, p) => LETTERS[a] + (p < ties.length ? (ties[p] ? " = " : " > ") : "")).join("");
  $("submit").disabled = ties.every(t => t);
}

async function act(fn) {
  if (!item || busy) return;
  busy = true;
  try { await fn(); } catch (err) { say(err.message, "err"); } finally { busy = false; }
}

const submit = () => act(async () => {
  if (ties.every(t => t)) throw new Error("Rank at least one answer above another (not all tied).");
  const summary = $("summary").textContent;
  const d = await api("/api/submit", {queue_item: item.id, labeler,
                                      responses: order.map(a => item.answers[a]), ranks: ranks()});
  say(d.duplicate ? "You had already ranked this item: your first ranking is kept." : `Saved: ${summary}`, "ok");
  await load();
});

const skip = () => act(async () => { skipped.push(item.id); say("Skipped.", ""); await load(); });

const flagItem = () => act(async () => {
  const d = await api("/api/flag", {queue_item: item.id, labeler, flag: $("flag").value, note: $("note").value});
  say(d.duplicate ? "Already flagged." : `Flagged as ${$("flag").value}.`, "ok");
  $("note").value = "";
  await load();
});

document.addEventListener("keydown", e => {
  const t = e.target.tagName;
  if (!item || t === "INPUT" || t === "SELECT" || (t === "BUTTON" && e.key === "Enter") || e.ctrlKey || e.metaKey || e.altKey) return;
  const n = parseInt(e.key, 10);
  if (n >= 1 && n <= order.length) { sel = n - 1; render(); }
  else if (e.key === "ArrowUp" && sel !== null && sel > 0) move(sel, sel - 1);
  else if (e.key === "ArrowDown" && sel !== null && sel < order.length - 1) move(sel, sel + 1);
  else if (e.key === "=" && sel !== null) { const g = sel < ties.length ? sel : sel - 1; ties[g] = !ties[g]; render(); }
  else if (e.key === "Enter") submit();
  else if (e.key === "s" || e.key === "S") skip();
  else if (e.key === "Escape") { sel = null; render(); }
  else return;
  e.preventDefault();
});

$("submit").onclick = submit;
$("skip").onclick = skip;
$("flagbtn").onclick = flagItem;
__JS_START__
</script>
</body></html>
"""
PAGE = _page(PAGE)


# The blind A/B page served by ``rlhf label --compare`` (components/apps/ab.py): a prompt and two answers
# side by side, labelled 1 and 2 only (which model wrote which is never sent to the page); the labeler
# picks one or a tie (buttons, or keys 1, 2, T), or skips (S).
AB_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Which answer is better?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
__STYLE_HEADER__
main{max-width:1100px;margin:1.4em auto;padding:0 1em}
__STYLE_TEXT__
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.answer{background:#fff;border:2px solid #d9e2ec;border-radius:6px;padding:.7em .9em;box-shadow:0 1px 2px #0001}
.answer .text{white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.4;margin-top:.4em}
.actions{display:flex;gap:.6em;align-items:center;justify-content:center;margin:1.1em 0;flex-wrap:wrap}
.actions button{font:inherit;padding:.45em 1.2em;border-radius:4px;border:1px solid #1976d2;background:#fff;color:#0d47a1;cursor:pointer}
.actions button.pick{background:#1976d2;color:#fff}
#msg{margin:.8em 0;min-height:1.3em;text-align:center}
.err{color:#c62828;font-weight:600}.ok{color:#2e7d32}
#empty{background:#fff;padding:2em;text-align:center;border-radius:6px;font-size:1.1em}
</style></head>
<body>
<header><h1>Which answer is better?</h1>
  <label>Labeler <input id="labeler" autocomplete="off"></label>
  <span id="progress"></span><div id="bar"><div></div></div>
</header>
<main>
  <div id="empty" hidden></div>
  <section id="task" hidden>
    <div class="label">Prompt <span id="ptype"></span></div>
    <div class="prompt" id="prompt"></div>
    <p class="help">Two answers to the prompt, in no particular order. Pick the better one, or a tie when neither is
      better: <kbd>1</kbd> or <kbd>2</kbd>, <kbd>T</kbd> for a tie, <kbd>S</kbd> skips.</p>
    <div class="pair">
      <div class="answer"><div class="label">Answer 1</div><div class="text" id="answer-0"></div></div>
      <div class="answer"><div class="label">Answer 2</div><div class="text" id="answer-1"></div></div>
    </div>
    <div class="actions">
      <button class="pick" id="first">1 is better</button>
      <button id="tie">Tie</button>
      <button class="pick" id="second">2 is better</button>
      <button id="skip">Skip</button>
    </div>
    <div id="msg"></div>
  </section>
</main>
<script>
let labeler = new URLSearchParams(location.search).get("labeler") || __LABELER__;
let item = null, skipped = [], busy = false;
const $ = id => document.getElementById(id);
const WORDS = {first: "answer 1 is better", second: "answer 2 is better", tie: "a tie"};

__JS_API__

async function load() {
  const q = `labeler=${encodeURIComponent(labeler)}&skip=${encodeURIComponent(skipped.join(","))}`;
  const d = await api(`/api/next?${q}`);
  $("progress").textContent = `${d.done} done \u00b7 ${d.remaining} remaining`;
  $("bar").firstElementChild.style.width = (d.total ? 100 * d.done / d.total : 0) + "%";
  item = d.item;
  $("task").hidden = !item;
  $("empty").hidden = !!item;
  if (!item) {
    $("empty").textContent = d.skipped ? `Only ${d.skipped} skipped item(s) left: reload the page to see them again.`
                                       : "All done, thank you! Nothing left to judge.";
    return;
  }
  $("prompt").textContent = item.prompt;
  $("ptype").textContent = item.prompt_type ? `(${item.prompt_type})` : "";
  item.answers.forEach((a, i) => { $("answer-" + i).textContent = a; });
}

async function act(fn) {
  if (!item || busy) return;
  busy = true;
  try { await fn(); } catch (err) { say(err.message, "err"); } finally { busy = false; }
}

const choose = choice => act(async () => {
  const d = await api("/api/judge", {queue_item: item.id, labeler, pair: item.pair, shown: item.answers, choice});
  say(d.duplicate ? "You had already judged this item: your first judgement is kept." : `Saved: ${WORDS[choice]}.`, "ok");
  await load();
});

const skip = () => act(async () => { skipped.push(item.id); say("Skipped.", ""); await load(); });

document.addEventListener("keydown", e => {
  const t = e.target.tagName;
  if (!item || t === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "1") choose("first");
  else if (e.key === "2") choose("second");
  else if (e.key === "t" || e.key === "T") choose("tie");
  else if (e.key === "s" || e.key === "S") skip();
  else return;
  e.preventDefault();
});

$("first").onclick = () => choose("first");
$("second").onclick = () => choose("second");
$("tie").onclick = () => choose("tie");
$("skip").onclick = skip;
__JS_START__
</script>
</body></html>
"""
AB_PAGE = _page(AB_PAGE)
