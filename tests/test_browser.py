"""The static rendering in a real browser: a tiny notebook that calls ``render_note`` is executed,
exported to HTML with nbconvert and loaded in headless Chromium (``--dump-dom``: the DOM after
scripts ran). Highlights and legend must be elements; note text carrying markup must stay text.
Install the browser with ``tools/install_browser.sh``; without it the test skips."""
import shutil
import subprocess
from html.parser import HTMLParser

import nbformat
import pytest

from rationale_kit import viz

# markup in the note text: were it injected, the script or the onerror handler would mark <body>
EVIL = ("<script>document.body.setAttribute('data-pwned','script')</script>"
        "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">")
TEXT = f"Patient with chest pain. {EVIL} Hypertension, poorly controlled."
JS_PROBE = "<script>document.body.setAttribute('data-js','ran')</script>"  # proves scripts run at all

# shared by the plain page and the notebook cell: draws ``html_note`` from TEXT and EVIL
RENDER = """h = TEXT.index("Hypertension")
layers = [viz.Layer("gold: mention", "gold", ((h, h + 12),), viz.GOLD_COLOURS["mention"], "mention"),
          viz.Layer(EVIL, "discrete", ((13, 23), (h, h + 12)), viz.SOURCE_COLOURS[0]),
          viz.Layer("entity", "discrete", ((h, h + 24),), viz.SOURCE_COLOURS[1]),
          viz.Layer("attention", "soft", ((0, 7, 0.2), (h, h + 12, 0.9)), "#1565c0")]
html_note = viz.render_note(TEXT, layers, title=EVIL, measures={"f1": 0.5})"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium binary (chromium, chromium-browser or google-chrome) on PATH: run tools/install_browser.sh")


class Dom(HTMLParser):
    """Elements (tag, attrs) of a dumped DOM, and the text of its script elements."""

    def __init__(self, markup: str):
        super().__init__()
        self.elements, self.scripts, self._in_script = [], [], False
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def find(self, tag, cls=None):
        return [a for t, a in self.elements if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def dump_dom(browser: str, page, tmp_path) -> Dom:
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: CDN scripts of the export fail at once
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "<body" in out.stdout, f"chromium failed: {out.stderr[-2000:]}"
    return Dom(out.stdout)


def check(dom: Dom):
    body = dom.find("body")[0]
    assert body.get("data-js") == "ran", "scripts did not run: the injection check would prove nothing"
    assert "data-pwned" not in body, f"markup in the note text ran: {body['data-pwned']}"
    assert not any("data-pwned" in s for s in dom.scripts), "note text became a <script> element"
    assert not [a for a in dom.find("img") if a.get("src") == "x"], "note text became an <img> element"
    assert len(dom.find("div", "rk-note")) == 1
    assert len(dom.find("mark")) >= 1  # gold background
    assert len(dom.find("span", "rk-u")) >= 3  # underlines: 2 sources on "Hypertension", 1 on "chest pain"
    assert any("box-shadow" in a.get("style", "") for t, a in dom.elements if t in ("span", "mark"))  # soft shading
    assert len(dom.find("div", "rk-legend")) == 1
    assert len(dom.find("span", "rk-legend-item")) == 4


def test_render_note_page_in_chromium(tmp_path):
    browser = chromium()
    exec(RENDER, ns := {"viz": viz, "TEXT": TEXT, "EVIL": EVIL})
    page = tmp_path / "note.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{ns['html_note']}{JS_PROBE}</body></html>",
                    encoding="utf-8")
    check(dump_dom(browser, page, tmp_path))


def test_exported_notebook_in_chromium(tmp_path):
    browser = chromium()
    nbclient = pytest.importorskip("nbclient")
    nbconvert = pytest.importorskip("nbconvert")
    cell = (f"from IPython.display import HTML, display\nfrom rationale_kit import viz\nTEXT = {TEXT!r}\nEVIL = {EVIL!r}\n"
            f"{RENDER}\ndisplay(HTML(html_note))\ndisplay(HTML({JS_PROBE!r}))")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert [o.get("output_type") for o in nb.cells[0].outputs] == ["display_data", "display_data"]
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    page = tmp_path / "notebook.html"
    page.write_text(body, encoding="utf-8")
    check(dump_dom(browser, page, tmp_path))


def test_run_report_first_screen_in_chromium(tmp_path):
    """The run report's opening (verdict grid, forest plot, caveats) as elements, data as text."""
    browser = chromium()
    import pandas as pd

    from rationale_kit.workbook import report

    rows = pd.DataFrame({"group": ["(a) x"], "label": [EVIL], "effect": [0.1], "lo": [0.05], "hi": [0.2],
                         "verdict": ["holds"], "note": ["n=12 · holds"]})
    png = viz.figure_png(viz.plot_forest(rows))
    cells = (report.GridCell("(a) x", "toy", "caml", "holds"), report.GridCell("(a) x", "toy", "laat", "does not hold", EVIL))
    table = report.Table("rows", pd.DataFrame({"finding": ["(a) x", "(a) x"], "comparison": [EVIL, "b"]}), "v.csv", group="finding")
    rep = report.Report("p", (("data", "toy"),), (), (), (
        report.Section("verdicts", "Verdicts", True, ("note",), (table,),
                       (report.Figure("forest", tmp_path / "verdicts_forest.png", png, generated=True),), cells),
        report.Section("caveats", "Caveats", True, (f"Synthetic data {EVIL}",))))
    page, _ = report.write_report(rep, tmp_path / "runs")
    page.write_text(page.read_text().replace("</body>", f"{JS_PROBE}</body>"), encoding="utf-8")
    dom = dump_dom(browser, page, tmp_path)
    body = dom.find("body")[0]
    assert body.get("data-js") == "ran" and "data-pwned" not in body
    assert len(dom.find("table", "grid")) == 1 and len(dom.find("div", "chip")) == 2
    assert [a["src"][:22] for a in dom.find("img")] == ["data:image/png;base64,"]  # the forest plot, no injected <img>
    assert len(dom.find("ul", "caveats")) == 1 and len(dom.find("tr", "group")) == 1
    assert len(dom.find("div", "scroll")) == 2  # grid and table scroll inside the page
