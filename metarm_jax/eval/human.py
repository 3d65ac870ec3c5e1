"""Human evaluation: blind pairs out (a CSV and one static HTML page), verdicts back in.

    paths = human.export_pairs("runs/x/human", prompts, responses_metarm, responses_sft,
                               name_a="metarm_round2", name_b="sft", seed=0)
    # give paths["html"] (or paths["csv"]) to the raters; keep paths["key"] to yourself
    res = human.import_verdicts("verdicts-<id>.csv", paths["key"], policy="metarm_round2")
    res.win, res.tie, res.lose, res.outcomes                # from `policy`'s point of view

Export writes three files into ``out_dir``:

  pairs.html  one self-contained page (no external resource, no policy name): per pair the
              prompt, "Response A" and "Response B", and a verdict form (A / B / tie). The
              button "Save verdicts (CSV)" builds the CSV in the browser (a Blob) and downloads
              it through a link, ``verdicts-<export_id>.csv`` with the columns
              export_id, pair_id, verdict, rater. Choices are also kept in the browser's
              localStorage, so a reload does not lose them.
  pairs.csv   the same pairs for a spreadsheet: export_id, pair_id, prompt, response_A,
              response_B and an empty verdict column to fill with A, B or tie.
  key.json    which policy is shown as A and as B in each pair. The sides are drawn per pair by
              ``numpy.random.default_rng(seed)`` (a fair coin). Keep it from the raters.

Import reads either CSV (any file with pair_id and verdict columns; export_id, when present,
must match the key's) and returns a HumanJudgeResult, a JudgeResult from the named policy's
point of view, with ``outcomes`` in the order of the exported prompts.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from metarm_jax.eval.judges import JudgeResult, _check_lengths
from metarm_jax.runtime import fileio
from metarm_jax.runtime.errors import UserError

VERDICTS = {"a": "A", "b": "B", "tie": "tie"}
KEY_VERSION = 1


@dataclasses.dataclass(frozen=True)
class HumanJudgeResult(JudgeResult):
    """A JudgeResult from human verdicts; `indices` are the exported prompt indices the
    outcomes belong to (all of them unless `allow_missing`), `stats` counts rated / missing."""

    indices: np.ndarray | None = None
    stats: dict = dataclasses.field(default_factory=dict)


def _export_id(seed: int, prompts, shown_a, shown_b) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([KEY_VERSION, int(seed)]).encode())
    for p, a, b in zip(prompts, shown_a, shown_b):
        h.update(json.dumps([p, a, b], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:12]


def export_pairs(
    out_dir: str,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    name_a: str,
    name_b: str,
    seed: int = 0,
    title: str = "Which response is better?",
    instructions: str = (
        "For each pair, read the prompt and the two responses, then choose the better response, "
        "or tie when neither is better. The sides are shuffled; judge the content only. "
        "When you are done (or want to stop), press Save verdicts (CSV) and send the file back."
    ),
) -> dict[str, str]:
    """Write pairs.html, pairs.csv and key.json into out_dir; returns their paths and the
    export id ({"html", "csv", "key", "export_id"})."""
    _check_lengths(prompts, responses_a, responses_b)
    if not prompts:
        raise ValueError("export_pairs: no prompts.")
    if name_a == name_b:
        raise ValueError(f"export_pairs: the two policies need different names, got {name_a!r}.")
    prompts = [str(p) for p in prompts]
    ra, rb = [str(r) for r in responses_a], [str(r) for r in responses_b]
    flip = np.random.default_rng(seed).random(len(prompts)) < 0.5
    shown_a = [b if f else a for a, b, f in zip(ra, rb, flip)]
    shown_b = [a if f else b for a, b, f in zip(ra, rb, flip)]
    export_id = _export_id(seed, prompts, shown_a, shown_b)
    ids = [f"p{i + 1:04d}" for i in range(len(prompts))]

    key = {
        "version": KEY_VERSION,
        "export_id": export_id,
        "seed": int(seed),
        "policy_a": name_a,
        "policy_b": name_b,
        "pairs": [
            {
                "pair_id": pid,
                "index": i,
                "A": name_b if f else name_a,
                "B": name_a if f else name_b,
            }
            for i, (pid, f) in enumerate(zip(ids, flip))
        ],
    }
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["export_id", "pair_id", "prompt", "response_A", "response_B", "verdict"])
    for pid, p, a, b in zip(ids, prompts, shown_a, shown_b):
        w.writerow([export_id, pid, p, a, b, ""])

    paths = {
        "html": os.path.join(out_dir, "pairs.html"),
        "csv": os.path.join(out_dir, "pairs.csv"),
        "key": os.path.join(out_dir, "key.json"),
    }
    fileio.write_text(
        paths["html"], _page(export_id, ids, prompts, shown_a, shown_b, title, instructions)
    )
    fileio.write_text(paths["csv"], buf.getvalue())
    fileio.write_json(paths["key"], key, indent=1, ensure_ascii=False)
    return {**paths, "export_id": export_id}


_CSS = """
html { scroll-padding-bottom: 5rem; }
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem 1rem 6rem;
  color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
.intro { color: #444; }
.pair { background: #fff; border: 1px solid #ddd; border-radius: 8px; margin: 1.25rem 0; padding: 1rem; }
.pair h2 { font-size: 1.05rem; margin: 0 0 .5rem; color: #555; }
.pair h3 { font-size: .95rem; margin: .25rem 0; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; background: #f4f4f4; border-radius: 6px;
  padding: .6rem; font-size: .95rem; line-height: 1.4; }
.responses { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; margin-top: .75rem; }
@media (max-width: 50rem) { .responses { grid-template-columns: 1fr; } }
fieldset { border: none; margin: .75rem 0 0; padding: 0; display: flex; gap: 1.5rem; flex-wrap: wrap; }
legend { font-weight: 600; margin-bottom: .35rem; }
label { cursor: pointer; }
.pair.done { border-color: #5a9; }
.bar { position: fixed; left: 0; right: 0; bottom: 0; background: #fff; border-top: 1px solid #ccc;
  padding: .6rem 1rem; display: flex; gap: 1rem; align-items: center; justify-content: center; }
button { font-size: 1rem; padding: .45rem 1rem; cursor: pointer; }
"""

_JS = """
(function () {
  "use strict";
  var EXPORT_ID = document.body.getAttribute("data-export-id");
  var STORE = "metarm-human-" + EXPORT_ID;
  var pairs = Array.prototype.slice.call(document.querySelectorAll("section.pair"));
  function verdictOf(sec) {
    var c = sec.querySelector("input[type=radio]:checked");
    return c ? c.value : "";
  }
  function progress() {
    var n = 0, saved = {};
    pairs.forEach(function (sec) {
      var v = verdictOf(sec);
      sec.classList.toggle("done", v !== "");
      if (v) { n += 1; saved[sec.getAttribute("data-pair")] = v; }
    });
    document.getElementById("progress").textContent = n + " of " + pairs.length + " answered";
    try {
      saved.__rater = document.getElementById("rater").value;
      window.localStorage.setItem(STORE, JSON.stringify(saved));
    } catch (e) { /* storage unavailable: nothing to keep */ }
  }
  function cell(s) {
    s = String(s);
    return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function csvText() {
    var rater = document.getElementById("rater").value;
    var rows = [["export_id", "pair_id", "verdict", "rater"]];
    pairs.forEach(function (sec) {
      rows.push([EXPORT_ID, sec.getAttribute("data-pair"), verdictOf(sec), rater]);
    });
    return rows.map(function (r) { return r.map(cell).join(","); }).join("\\r\\n") + "\\r\\n";
  }
  function save() {
    var blob = new Blob([csvText()], { type: "text/csv;charset=utf-8" });
    var link = document.getElementById("download");
    if (link.href) { try { URL.revokeObjectURL(link.href); } catch (e) {} }
    link.href = URL.createObjectURL(blob);
    link.download = "verdicts-" + EXPORT_ID + ".csv";
    link.hidden = false;
    link.click();
  }
  try {
    var saved = JSON.parse(window.localStorage.getItem(STORE) || "{}");
    if (saved.__rater) { document.getElementById("rater").value = saved.__rater; }
    pairs.forEach(function (sec) {
      var v = saved[sec.getAttribute("data-pair")];
      var input = v && sec.querySelector('input[type=radio][value="' + v + '"]');
      if (input) { input.checked = true; }
    });
  } catch (e) { /* nothing saved */ }
  document.addEventListener("change", progress);
  document.getElementById("save").addEventListener("click", save);
  progress();
})();
"""


def _page(export_id, ids, prompts, shown_a, shown_b, title, instructions) -> str:
    e = html.escape
    n = len(ids)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        f'<body data-export-id="{e(export_id)}">',
        f"<h1>{e(title)}</h1>",
        f'<p class="intro">{e(instructions)}</p>',
        '<p><label>Your name or initials (optional): <input id="rater" type="text" '
        'autocomplete="off"></label></p>',
    ]
    for i, (pid, p, a, b) in enumerate(zip(ids, prompts, shown_a, shown_b)):
        radios = "".join(
            f'<label><input type="radio" name="v-{pid}" value="{v}"> {label}</label>'
            for v, label in (("A", "A is better"), ("B", "B is better"), ("tie", "Tie"))
        )
        out += [
            f'<section class="pair" data-pair="{pid}" id="{pid}">',
            f"<h2>Pair {i + 1} of {n} <small>({pid})</small></h2>",
            f'<h3>Prompt</h3><div class="text prompt">{e(p.strip(chr(10)))}</div>',
            '<div class="responses">',
            f'<div><h3>Response A</h3><div class="text resp-a">{e(a)}</div></div>',
            f'<div><h3>Response B</h3><div class="text resp-b">{e(b)}</div></div>',
            "</div>",
            f"<fieldset><legend>Which response is better?</legend>{radios}</fieldset>",
            "</section>",
        ]
    out += [
        '<div class="bar"><span id="progress"></span>',
        '<button id="save" type="button">Save verdicts (CSV)</button>',
        '<a id="download" hidden>download the CSV again</a></div>',
        f"<script>{_JS}</script>",
        "</body></html>",
        "",
    ]
    return "\n".join(out)


def read_key(key_path: str) -> dict:
    try:
        with open(key_path, encoding="utf-8") as f:
            key = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"human eval: cannot read the key file {key_path}: {e}") from None
    if not isinstance(key, dict) or "pairs" not in key or "export_id" not in key:
        raise UserError(f"human eval: {key_path} is not a key file written by export_pairs.")
    return key


def import_verdicts(
    verdicts_csv: str,
    key_path: str,
    *,
    policy: str | None = None,
    allow_missing: bool = False,
) -> HumanJudgeResult:
    """The filled CSV + the key -> win / tie / lose of ``policy`` (default: the key's
    ``policy_a``) against the other policy. Every exported pair needs a verdict (A, B or tie,
    any case) unless ``allow_missing``, which leaves unrated pairs out (see ``indices``)."""
    key = read_key(key_path)
    names = (key["policy_a"], key["policy_b"])
    policy = names[0] if policy is None else policy
    if policy not in names:
        raise UserError(f"human eval: policy {policy!r} is not in {key_path} (it has {names}).")
    sides = {p["pair_id"]: p for p in key["pairs"]}
    try:
        with open(verdicts_csv, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
            fields = set(rows[0]) if rows else set()
    except OSError as e:
        raise UserError(f"human eval: cannot read {verdicts_csv}: {e}") from None
    if not {"pair_id", "verdict"} <= fields:
        raise UserError(
            f"human eval: {verdicts_csv} needs the columns pair_id and verdict "
            f"(it has {sorted(fields) or 'none'})."
        )
    got: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        eid = (row.get("export_id") or "").strip()
        if eid and eid != key["export_id"]:
            raise UserError(
                f"human eval: {verdicts_csv} line {line} is from export {eid}, but {key_path} "
                f"is the key of export {key['export_id']}."
            )
        pid = (row.get("pair_id") or "").strip()
        if pid not in sides:
            raise UserError(f"human eval: {verdicts_csv} line {line}: unknown pair_id {pid!r}.")
        raw = (row.get("verdict") or "").strip()
        if not raw:
            continue
        if raw.lower() not in VERDICTS:
            raise UserError(
                f"human eval: {verdicts_csv} line {line}: verdict {raw!r} for {pid}; "
                "use A, B or tie."
            )
        if pid in got:
            raise UserError(f"human eval: {verdicts_csv} line {line}: a second verdict for {pid}.")
        got[pid] = VERDICTS[raw.lower()]
    missing = [p["pair_id"] for p in key["pairs"] if p["pair_id"] not in got]
    if missing and not allow_missing:
        raise UserError(
            f"human eval: {len(missing)} of {len(sides)} pairs have no verdict in "
            f"{verdicts_csv} (first: {', '.join(missing[:5])}); fill them, or pass "
            "allow_missing=True to leave them out."
        )
    if not got:
        raise UserError(f"human eval: {verdicts_csv} holds no verdict.")
    rated = sorted((p for p in key["pairs"] if p["pair_id"] in got), key=lambda p: p["index"])
    outcomes = np.zeros(len(rated), np.int64)
    for j, p in enumerate(rated):
        v = got[p["pair_id"]]
        if v != "tie":
            outcomes[j] = 1 if p[v] == policy else -1
    win, lose = int((outcomes > 0).sum()), int((outcomes < 0).sum())
    opponent = names[1] if policy == names[0] else names[0]
    return HumanJudgeResult(
        win,
        len(rated) - win - lose,
        lose,
        None,
        outcomes,
        indices=np.asarray([p["index"] for p in rated], np.int64),
        stats={
            "policy": policy,
            "opponent": opponent,
            "export_id": key["export_id"],
            "rated": len(rated),
            "missing": len(missing),
        },
    )
