"""HTML pages rendered from JSON alone: report.html from audit.json, compare.html from compare.json.

Everything reaches a page through jinja2 with autoescaping. Images are inline PNG data URIs
(anything else is dropped), the only script is the page's own inline table sorter, allowed by a
Content-Security-Policy hash, and nothing is fetched: a crafted audit.json can neither make the
page load a resource nor run code.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

import jinja2

from memaudit import outputs
from memaudit.errors import InputError
from memaudit.storage import write_text_atomic

from . import plots
from .redact import REDACTIONS, redact_image

TABLE_SCRIPT = resources.files(__name__).joinpath("templates", "sortable.js").read_text(encoding="utf-8")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(TABLE_SCRIPT.encode()).digest()).decode()}'"
)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("memaudit.reports", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda value: f"{100.0 * _number(value):.1f}%"
    env.filters["num"] = lambda value: f"{_number(value):.4g}"
    env.filters["show"] = show
    env.filters["local"] = local_paths
    env.globals.update(table_script=TABLE_SCRIPT, csp=CONTENT_SECURITY_POLICY)
    return env


_PATH_TOKEN = re.compile(r"^(?P<prefix>[A-Za-z][\w-]*:)?(?P<path>[^\s]*/[^\s]*)$")


def local_paths(text, redact: str = "none") -> str:
    """A spec or command line as a page shows it: every absolute path relative to the working
    directory when it lies below it, else only its file name; with ``redact`` other than none,
    every path only its file name (a page sent on names no folder of the machine)."""
    if text is None or isinstance(text, jinja2.Undefined):
        return "none"
    here = Path.cwd()

    def one(token: str) -> str:
        match = _PATH_TOKEN.match(token)
        if not match or match.group("prefix") in ("hf:",):
            return token
        path = Path(match.group("path"))
        if redact != "none":
            shown = path.name or token
        elif path.is_absolute():
            try:
                shown = str(path.relative_to(here))
            except ValueError:
                shown = path.name
        else:
            return token
        return (match.group("prefix") or "") + shown

    return " ".join(one(token) for token in str(text).split(" "))


def show(value) -> str:
    """A setting as people write it, not as Python prints it: none, yes/no, ``width 16, depth 2``,
    ``1, 2, 4``; JSON's null never reaches a page as "None"."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {show(item)}" for key, item in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(show(item) for item in value) or "none"
    return str(value)


def _number(value) -> float:
    """A figure to print; a page rendered from a hand-made JSON may hold anything in its place."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "missing" if isinstance(value, jinja2.Undefined) else f"a {type(value).__name__}"
        raise InputError(f"audit.json: a figure the report shows is {kind}, expected a number; "
                         "render an audit.json memaudit wrote")
    return float(value)


def _redacted_findings(findings: list, mode: str) -> list:
    redacted = []
    for i, finding in enumerate(findings or []):
        where = f"audit.json findings[{i}]"
        neighbors = [{**n, "image": redact_image(n.get("image"), mode, f"{where}.neighbors[{j}].image")}
                     for j, n in enumerate(finding.get("neighbors") or [])]
        other_spaces = {name: {**n, "image": redact_image(n.get("image"), mode, f"{where}.other_spaces.{name}.image")}
                        for name, n in (finding.get("other_spaces") or {}).items()}
        redacted.append({**finding, "image": redact_image(finding.get("image"), mode, f"{where}.image"),
                         "neighbors": neighbors, "other_spaces": other_spaces})
    return redacted


def _redacted_base(section: dict | None, mode: str) -> dict | None:
    """audit.json's base_comparison with the images of its pairs redacted as ``mode`` says."""
    if not section:
        return None
    pairs = []
    for i, pair in enumerate(section.get("pairs") or []):
        images = {key: redact_image(value, mode, f"audit.json base_comparison.pairs[{i}].images.{key}")
                  for key, value in (pair.get("images") or {}).items()}
        pairs.append({**pair, "images": images})
    points = [{"name": f"{label} ({what})", "fraction": section[key][who]["fraction"], "ci95": section[key][who]["ci95"]}
              for key, what in (("nn_ratio", "paper"), ("verdict", "verdict"))
              for who, label in (("finetune", "fine-tune"), ("base", "base"))]
    return {**section, "pairs": pairs, "plot": plots.interval_points(points, x_label="model and share")}


def render_report(audit: dict, redact: str = "none") -> str:
    """The HTML page of one audit, with its images redacted as ``redact`` says."""
    if redact not in REDACTIONS:
        raise InputError(f"--redact {redact}: expected one of {', '.join(REDACTIONS)}")
    plots_by_criterion = {
        (space_name, name): plots.histogram_bars(criterion.get("histogram", {}), float(criterion["threshold"]),
                                                 criterion.get("memorized_when", "below") == "below", f"{name} score")
        for space_name, space in audit.get("spaces", {}).items()
        for name, criterion in space.get("criteria", {}).items()
        if criterion.get("histogram")
    }
    headline = audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
    snapshots = (audit.get("snapshots") or {}).get("trajectory")
    steps = snapshots and all(isinstance(p.get("step"), int) for p in snapshots)  # ticks by step when known
    trajectory = plots.interval_points([{"name": p["snapshot"], "fraction": p["memorization_ratio"], "ci95": p["ci95"],
                                         **({"label": p["step"]} if steps else {})} for p in snapshots],
                                       ordered=True, highlight=audit["snapshots"].get("max_at"),
                                       x_label="training step" if steps else "snapshot") if snapshots else None
    holdout_plots = {
        space_name: plots.overlaid_distributions([("generated samples", {"counts": h.get("samples", [])}),
                                                  ("held-out images", {"counts": h.get("holdout", [])})],
                                                 h.get("edges"), "L2 distance to the nearest training image")
        for space_name, space in audit.get("spaces", {}).items()
        if (h := space.get("nn_distance_histogram"))
    }
    findings = _redacted_findings(audit.get("findings"), redact)
    groups: dict[tuple[str, str], list] = {}  # the flagged samples of every other space and criterion
    for finding in findings:
        key = (finding.get("space", "pixel"), finding.get("criterion", "nn-ratio"))
        if key != ("pixel", "nn-ratio"):
            groups.setdefault(key, []).append(finding)
    criteria = {(space, name): c for space, summary in audit.get("spaces", {}).items()
                for name, c in summary.get("criteria", {}).items()}
    verdict = _verdict(audit)
    template = _environment().get_template("report.html.j2")
    try:
        return template.render(audit=audit, headline=headline, verdict=verdict, plots=plots_by_criterion, redact=redact,
                               holdout_plots=holdout_plots, others=verdict["others_flagging"],
                               informational=verdict["informational"], groups=groups, criteria=criteria,
                               trajectory=trajectory, base=_redacted_base(audit.get("base_comparison"), redact),
                               findings=[f for f in findings if (f.get("space", "pixel"), f.get("criterion", "nn-ratio"))
                                         == ("pixel", "nn-ratio")])
    except jinja2.UndefinedError as error:  # a field the schema does not pin down, missing
        raise InputError(f"audit.json: a field the report shows is missing ({error}); render an audit.json memaudit wrote") from None


def _verdict(audit: dict) -> dict:
    """audit.json's ``headline`` with what an audit written before the verdict rule lacks filled in
    the way it was read then: memorized under the paper's criterion, or no evidence."""
    headline = dict(audit.get("headline") or {})
    if "verdict" not in headline:
        paper = audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
        headline.setdefault("verdict", "memorizes" if paper["memorized"] else "no-evidence")
        headline.setdefault("reason", f"{paper['memorized']} of {paper['n']} samples memorized under the paper's "
                                      "criterion (an audit written before the verdict rule: no exact-copy check)")
    for key, default in (("exact_copies", []), ("others_flagging", []), ("informational", []), ("copy_rms", 1.0),
                         ("target_fpr", 0.01)):
        headline.setdefault(key, default)
    return headline


def write_report(run_dir: Path, redact: str | None = None) -> Path:
    """Render ``run_dir/report.html`` from ``run_dir/audit.json``; ``redact`` defaults to the
    choice recorded in audit.json."""
    audit = outputs.read_audit(run_dir)
    if redact is None:
        redact = (audit.get("report") or {}).get("redact", "none")
    path = Path(run_dir) / outputs.REPORT_HTML
    write_text_atomic(path, render_report(audit, redact))
    return path


def render_comparison(comparison: dict) -> str:
    """The HTML page comparing several audits (see memaudit.compare)."""
    template = _environment().get_template("compare.html.j2")
    runs = comparison["runs"]
    series = [(run["name"], run["headline"].get("histogram", {})) for run in runs]
    points = [{"name": run["name"], "fraction": run["headline"]["fraction"], "ci95": run["headline"]["ci95"]}
              for run in runs]
    first = runs[0]["headline"] if runs else {}
    overlay = plots.overlaid_distributions(series, (first.get("histogram") or {}).get("edges"), "d1/d2 (nn-ratio)",
                                           first.get("threshold"))
    return template.render(comparison=comparison, overlay=overlay, trend=plots.interval_points(points))


def render_emm(emm: dict) -> str:
    """The HTML page of an EMM run (see memaudit.retraining.run): bracket, curves against |D|, every model."""
    series = [{"name": search.get("label") or "EMM search", "sizes": search.get("sizes", [])}
              for search in emm.get("searches", [])]
    all_sizes = sorted({s["size"] for search in emm.get("searches", []) for s in search.get("sizes", [])})
    template = _environment().get_template("emm.html.j2")
    return template.render(emm=emm, curves=plots.size_curves(series, float(emm["threshold"])), all_sizes=all_sizes)


def write_emm_page(run_dir: Path) -> Path:
    """Render ``run_dir/emm.html`` from ``run_dir/emm.json`` alone."""

    path = Path(run_dir) / outputs.EMM_HTML
    write_text_atomic(path, render_emm(outputs.read_emm(run_dir)))
    return path


def render_mia(mia: dict) -> str:
    """The HTML page of a membership-inference run (see memaudit.mia): ROC curves on a log FPR axis,
    each attack's AUC and TPR at low FPR, and the most exposed members beside their reconstructions."""
    from .redact import safe_png

    attacks = mia.get("attacks", {})
    series = [{"name": name, "fpr": a["roc"]["fpr"], "tpr": a["roc"]["tpr"]} for name, a in attacks.items() if "roc" in a]
    exposed = [{**e, "member_png": safe_png(e.get("member_png")), "reconstruction_png": safe_png(e.get("reconstruction_png"))}
               for e in mia.get("exposed", [])]
    smallest = min((a["n_nonmembers"] for a in attacks.values() if a.get("n_nonmembers")), default=1000)
    template = _environment().get_template("mia.html.j2")
    return template.render(mia=mia, exposed=exposed, roc=plots.roc_curves(series, floor=max(1e-4, 1.0 / smallest)))


def _write_page(run_dir: Path, name: str, command: str, what: str, render) -> Path:
    """Render ``run_dir/NAME.html`` from ``run_dir/NAME.json`` alone."""
    document = outputs.read_run_json(run_dir, f"{name}.json", command, what)
    path = Path(run_dir) / f"{name}.html"
    write_text_atomic(path, render(document))
    return path


def write_mia_page(run_dir: Path) -> Path:
    """Render ``run_dir/mia.html`` from ``run_dir/mia.json`` alone."""
    return _write_page(run_dir, "mia", "memaudit mia", "membership-inference run", render_mia)


def render_extract(extract: dict) -> str:
    """The HTML page of an extraction run (see memaudit.extraction.cliques): each clique's representative
    beside its nearest training image when the run verified against one."""
    from .redact import safe_png

    cliques = []
    for clique in extract.get("cliques", []):
        verification = clique.get("verification")
        if verification:
            verification = {**verification, "nearest_train_png": safe_png(verification.get("nearest_train_png"))}
        cliques.append({**clique, "representative_png": safe_png(clique.get("representative_png")),
                        "verification": verification})
    return _environment().get_template("extract.html.j2").render(extract=extract, cliques=cliques)


def write_extract_page(run_dir: Path) -> Path:
    """Render ``run_dir/extract.html`` from ``run_dir/extract.json`` alone."""
    return _write_page(run_dir, "extract", "memaudit extract", "extraction run", render_extract)


def write_detect_page(run_dir: Path) -> Path:
    """Render ``run_dir/detect.html`` from ``run_dir/detect.json`` alone."""
    return _write_page(run_dir, "detect", "memaudit detect", "detection run",
                       lambda detect: _environment().get_template("detect.html.j2").render(detect=detect))
