"""Screenshots of the MLflow UI for docs/comparing_runs.md, taken in a real (headless) Chromium.

    python docs/screenshots.py --data /path/to/mnist.npz [--store FOLDER] [--out docs/images]

Runs a small real 2x2 sweep in a temporary folder (or, with --store, uses the mlruns/ of a
folder where such a sweep ran), starts `mlflow server` on its store, drives Chromium over
the DevTools protocol the way a reader clicks through the UI, starting from the URLs the
sweep prints, writes these PNGs into --out, prints the clicks each took, and stops the
server and the browser:

    runs_table.png      the sweep's runs table, best first (the URL the sweep prints)
    sweep_summary.png   the parent run's page: the best setting and the table of every job
    parent_samples_card.png  the parent's Model metrics: its `samples` card on the last epoch's
                        montage (the slider goes through the epochs)
    parent_samples.png  that montage at full size (a click on it): every job's grid side by
                        side, best first, labelled with its setting and score
    run_samples.png     the best job's Model metrics: its `samples` card on its latest grid
    run_grid.png        the URL the best job printed: its Artifacts tab on its newest grid, whole,
                        with MLflow's Assistant panel open as on a first visit
    sample_grids.png    the chart view of the sweep's runs table: the `samples` image grid,
                        one column per run, at the latest epoch, run params hidden
    sweep_curves.png    the parent's Artifacts tab on summary/sweep_curves_<metric>.png (3 clicks)
    parent_page.png     the parent's page reached from MLflow's home page (http://127.0.0.1:PORT/)
                        on a browser's first visit:
                        the description, the Metrics (sweep.best.*) and Parameters (sweep.swept.*,
                        sweep.fixed.*) cards

The server runs as the command ganlab prints starts it (`--app-name ganlab`). The home-page
path runs in a fresh browser profile, as a first visit: home -> experiment -> parent -> its
montage, says whether any page on the way was a GenAI one, and counts the clicks that make
the sweep's runs table by hand from the experiment's runs page.

Needs Chromium (Debian: apt-get install chromium) and the websocket-client package. The
clicks find MLflow 3.17's buttons by their labels; another MLflow version may need them
updated. `Browser.shown_image` is also what tests/test_browser.py asserts with.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ganlab.core import scores
from ganlab.sweeps import summary as sweep_report
from ganlab.sweeps.ranking import SUMMARY_DIR  # the parent's summary/ folder
from ganlab.tracking import store as tracking  # noqa: E402

SWEEP = ["-m", "dropout=0.1,0.3", "label_smoothing=0,0.2", "epochs=2", "eval.every=1", "steps_per_epoch=50",
         "eval.num_samples=1000"]
WIDTH, HEIGHT = 1600, 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MNIST .npz for the sweep (data.path); default: the Keras cache")
    parser.add_argument("--store", type=Path, help="a folder whose mlruns/ holds a finished sweep: no new sweep")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ganlab-screenshots-") as scratch:
        folder = args.store.resolve() if args.store else Path(scratch)
        if not args.store:
            run_sweep(folder, args.data)
        uri = tracking.default_tracking_uri(folder)
        client, experiment_id = tracking.open_reader(uri, "ganlab")
        parent_id, children = tracking.sweep_children(client, experiment_id)
        best_id = client.get_run(parent_id).data.tags["best.run_id"]
        runs_table = tracking.view_link(experiment_id, sweep_report.view_key(parent_id))
        with mlflow_server(uri, folder) as base, Browser(Path(scratch) / "chromium") as browser:
            shoot_runs_table(browser, f"{base}/{runs_table}", args.out / "runs_table.png")
            shoot_sweep_summary(browser, f"{base}/{tracking.run_link(experiment_id, parent_id)}", args.out / "sweep_summary.png")
            parent_page, best_page = (f"{base}/{tracking.run_link(experiment_id, run)}" for run in (parent_id, best_id))
            shoot_card(browser, parent_page, args.out / "parent_samples_card.png")
            shoot_card(browser, parent_page, args.out / "parent_samples.png", preview=True)
            shoot_card(browser, best_page, args.out / "run_samples.png")
            newest = max(item.path for item in client.list_artifacts(best_id, "samples"))
            shoot_printed_url(browser, f"{base}/{tracking.run_link(experiment_id, best_id, newest)}", args.out / "run_grid.png")
            shoot_sample_grids(browser, f"{base}/{runs_table}", args.out / "sample_grids.png")
            curves = next(item.path for item in client.list_artifacts(parent_id, SUMMARY_DIR)
                          if Path(item.path).name.startswith("sweep_curves_"))
            shoot_curves(browser, parent_page, curves, args.out / "sweep_curves.png")
            swept = [name.removeprefix(tracking.SWEEP_SWEPT_PARAM) for name in client.get_run(parent_id).data.params
                     if name.startswith(tracking.SWEEP_SWEPT_PARAM)]
            objective = next(name.removeprefix(scores.SWEEP_BEST_PREFIX) for name in client.get_run(parent_id).data.metrics
                             if name.startswith(scores.SWEEP_BEST_PREFIX) and not name.endswith(scores.INTERVAL_BOUNDS))
            shoot_home_path(base, Path(scratch), client.get_run(parent_id).info.run_name, [objective, *swept],
                            args.out / "parent_page.png")
    print(f"screenshots in {args.out}")


def run_sweep(folder: Path, data: str | None) -> None:
    print(f"running the sweep in {folder} (a few minutes)", flush=True)
    overrides = SWEEP + ([f"data.path={Path(data).resolve()}"] if data else [])
    result = subprocess.run([sys.executable, "-m", "ganlab.train", *overrides], cwd=folder, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{result.stderr[-3000:]}")


@contextlib.contextmanager
def mlflow_server(uri: str, folder: Path):
    """`mlflow server` (the server behind `mlflow ui`) on a free local port, one worker, as the command ganlab
    prints runs it (`--app-name ganlab`: its page opens experiments for model training); yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--app-name", tracking.UI_APP],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no background job workers
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/health"), "the MLflow server to answer", 180, server)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gave up waiting for {what}: the process ended with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.5)


# ---------------------------------------------------------------------------- the pictures


def shoot_runs_table(browser: Browser, url: str, path: Path) -> None:
    """The runs table as the sweep's printed URL opens it: its jobs, best first, objective and knobs as columns."""
    browser.set_size(1800, HEIGHT)
    browser.open(url, until_text="dropout=0.3 ls=0.2")
    browser.wait("document.querySelectorAll('.ag-row').length >= 4")
    bottom = browser.js("Math.max(...[...document.querySelectorAll('.ag-row')].map(r => r.getBoundingClientRect().bottom))")
    browser.screenshot(path, height=bottom + 50)
    browser.set_size(WIDTH, HEIGHT)


def shoot_sweep_summary(browser: Browser, url: str, path: Path) -> None:
    """The parent run's page as it opens: its description (best setting, the table of every job, best first)."""
    browser.open(url, until_text="Best")
    bottom = browser.js("[...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && "
                        "/^(Metrics|Parameters) \\(/.test(e.textContent.trim()))?.getBoundingClientRect().top")
    browser.screenshot(path, height=(bottom or HEIGHT) - 10)


def shoot_card(browser: Browser, url: str, path: Path, preview: bool = False) -> None:
    """From a run's printed URL, its Model metrics tab (a click) with the `samples` card as it opens
    (scrolled to), or, with `preview`, the picture at full size as a click on it opens it."""
    browser.open(url, until_text="Model metrics")
    browser.click("[...document.querySelectorAll('[role=tab]')].find(tab => tab.innerText.trim() === 'Model metrics')")
    shown = browser.shown_image("samples")
    print(f"  the samples card opened on {shown['src'].split('images/')[1][:32]}..., "
          f"{shown['visible']:.0%} of the picture in the card", flush=True)
    if preview:
        browser.click(f"({SAMPLES_CARD}).querySelector('img')")
        browser.wait("[...document.querySelectorAll('img')].some(i => !i.src.includes('compressed') && i.complete && "
                     "i.naturalWidth > 0) && !document.querySelector('[class*=-appear-active], [class*=-enter-active]')")
    browser.screenshot(path)
    browser.key("Escape")


def shoot_printed_url(browser: Browser, url: str, path: Path) -> None:
    """The URL a job prints, as it opens: the run's Artifacts tab showing its newest grid (no click)."""
    browser.clicks, browser.typed = 0, []
    browser.call("Page.navigate", url=url)
    browser.wait("[...document.querySelectorAll('img')].some(i => i.complete && i.naturalWidth >= 280)")
    time.sleep(1)
    browser.screenshot(path)


def shoot_sample_grids(browser: Browser, url: str, path: Path) -> None:
    """From the runs table, the chart view: the `samples` image grid (at its opening step, the latest),
    run params hidden (Configure), full screen."""
    browser.open(url, until_text="dropout=0.3 ls=0.2")
    browser.click("document.querySelector('input[value=CHART]').closest('label')")  # the chart-view button
    browser.wait("document.body.innerText.includes('Add chart')")
    browser.click("document.querySelector('input[placeholder=\"Search metric charts\"]')")
    browser.type_text("samples")
    browser.wait(f"!!({SAMPLES_CARD})")
    browser.click(f"({SAMPLES_CARD}).querySelector('[data-testid=experiment-view-compare-runs-card-menu]')")
    browser.click("[...document.querySelectorAll('[role=menuitem]')].find(item => item.innerText.trim() === 'Configure')")
    browser.wait("!!document.querySelector('[role=dialog]')")
    browser.click("[...document.querySelectorAll('[role=dialog] label')].find(label => label.innerText.includes('Show run parameters'))")
    browser.click("[...document.querySelectorAll('[role=dialog] button')].find(b => b.innerText.trim() === 'Save changes')")
    browser.wait("!document.querySelector('[role=dialog]')")
    browser.set_size(WIDTH, 560)  # the full-screen chart fills the window: a low one leaves no empty space
    browser.click(f"({SAMPLES_CARD}).querySelector('button[data-component-id=fullscreen_button_chartcard]')")
    browser.wait("[...document.querySelectorAll('[role=dialog] img')].length >= 4 && "
                 "[...document.querySelectorAll('[role=dialog] img')].every(img => img.complete && img.naturalWidth > 0)")
    browser.screenshot(path)
    browser.set_size(WIDTH, HEIGHT)


def shoot_curves(browser: Browser, url: str, artifact: str, path: Path) -> None:
    """From the parent's page, its Artifacts tab, the summary folder, the curves picture (3 clicks)."""
    browser.open(url, until_text="Best")
    browser.click("[...document.querySelectorAll('[role=tab]')].find(tab => tab.innerText.trim() === 'Artifacts')")
    for name in Path(artifact).parts:  # summary, then sweep_curves_<metric>.png
        browser.wait(f"!!({tree_node(name)})")
        browser.click(tree_node(name))
    browser.wait("[...document.querySelectorAll('img')].some(i => i.complete && i.naturalWidth >= 800)")
    time.sleep(1)
    bottom = browser.js("Math.max(...[...document.querySelectorAll('img')].filter(i => i.naturalWidth >= 800)"
                        ".map(i => i.getBoundingClientRect().bottom))")
    browser.screenshot(path, height=bottom + 40)


def tree_node(name: str) -> str:
    """The artifact tree's entry `name` (the innermost element whose text it is)."""
    return f"[...document.querySelectorAll('span,div')].filter(e => e.innerText && e.innerText.trim() === {json.dumps(name)}).pop()"


# A GenAI page: its URL says so, or it is an experiment's GenAI view, or the sidebar is the GenAI one
GENAI_PAGE = ("/[?&]workflowType=genai|#\\/experiments\\/[^/?]+\\/(overview|traces|chat-sessions)/.test(location.href) || "
              "document.body.innerText.includes('Training runs')")
EXPERIMENT_LINK = "[...document.querySelectorAll('a')].find(a => a.innerText.trim() === 'ganlab')"  # on the home page


def shoot_home_path(base: str, scratch: Path, parent_name: str, columns: list[str], path: Path) -> None:
    """MLflow's home page to the sweep's best setting (the parent's page, `path`) and to its montage, counted
    in a fresh browser profile (a first visit: MLflow's GenAI / Model training switch never set), each page
    checked for GenAI."""
    experiment = EXPERIMENT_LINK
    with Browser(scratch / "chromium-first-visit") as browser:
        browser.open(f"{base}/", until_text="Recent Experiments")
        genai_pages = []
        seen = lambda: genai_pages.extend([browser.js("location.hash")] if browser.js(GENAI_PAGE) else [])  # noqa: E731
        seen()
        browser.click(experiment)
        browser.wait(f"document.body.innerText.includes({json.dumps(parent_name)}) || {GENAI_PAGE}")
        seen()
        browser.click(f"[...document.querySelectorAll('a')].find(a => a.innerText.trim() === {json.dumps(parent_name)})")
        browser.wait("document.body.innerText.includes('Best job') && document.body.innerText.includes('Parameters (')")
        time.sleep(1)
        seen()
        browser.screenshot(path)
        browser.click("[...document.querySelectorAll('[role=tab]')].find(tab => tab.innerText.trim() === 'Model metrics')")
        shown = browser.shown_image("samples")
        seen()
        card = browser.clicks
        browser.click(f"({SAMPLES_CARD}).querySelector('img')")  # the montage at full size
        browser.wait("[...document.querySelectorAll('img')].some(i => !i.src.includes('compressed') && i.complete && "
                     "i.naturalWidth > 0)")
        seen()
        print(f"  home -> the montage, first visit: {card} clicks to its card ({shown['src'].split('images/')[1][:20]}..., "
              f"{shown['visible']:.0%} of it in the card), {browser.clicks} at full size; "
              f"GenAI pages passed: {genai_pages or 'none'}", flush=True)
        walk_to_montage_link(browser, base, parent_name, experiment)
        browser.open(f"{base}/", until_text="Recent Experiments")
        browser.click(experiment)
        browser.wait(f"document.body.innerText.includes({json.dumps(parent_name)})")
        shoot_table_by_hand(browser, columns)


def walk_to_montage_link(browser: Browser, base: str, parent_name: str, experiment: str) -> None:
    """Home -> the experiment -> the parent -> its description's "every job's samples" link: the final montage in
    the parent's Artifacts tab, and how much of it the window shows. MLflow opens a description's links in a new
    tab; the walk follows the link's address in this one and counts it as the click it is."""
    browser.clicks, browser.typed = 0, []
    browser.open(f"{base}/", until_text="Recent Experiments")
    browser.click(experiment)
    browser.wait(f"document.body.innerText.includes({json.dumps(parent_name)})")
    browser.click(f"[...document.querySelectorAll('a')].find(a => a.innerText.trim() === {json.dumps(parent_name)})")
    link = "[...document.querySelectorAll('a')].find(a => a.innerText.trim() === \"every job's samples\")"
    browser.wait(f"!!({link})")
    href = browser.js(f"({link}).href")
    browser.clicks += 1
    browser.call("Page.navigate", url=href)
    # the picture MLflow draws (from a blob: its address does not name the file), the largest on the page
    montage = ("[...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0 && "
               "i.getBoundingClientRect().height > 0).sort((a, b) => b.naturalWidth - a.naturalWidth)[0]")
    browser.wait(f"!!({montage}) && ({montage}).naturalWidth >= 1000")
    box = browser.js(f"(b => [b.top, b.bottom, b.height])(({montage}).getBoundingClientRect())")
    in_view = (min(box[1], HEIGHT) - max(box[0], 0)) / box[2]
    genai = browser.js(GENAI_PAGE)
    print(f"  home -> the montage by the description's link: {browser.clicks} clicks (ganlab, the parent, "
          f"\"every job's samples\"), {in_view:.0%} of it in the {WIDTH} x {HEIGHT} window; a GenAI page: {genai}",
          flush=True)


def shoot_table_by_hand(browser: Browser, columns: list[str]) -> None:
    """The runs table as the sweep's shared view sets it, made by hand from the experiment's runs table as it
    opens: the parent's +, Columns and a tick for each of `columns` (the objective, the swept knobs), then the
    objective's column header twice (descending, then ascending: fid's lower is better)."""
    browser.clicks, browser.typed = 0, []
    browser.click("document.querySelector('.ag-row button')")  # the parent's +: its jobs
    browser.wait("document.querySelectorAll('.ag-row').length > 5")
    menu_item = ("[...document.querySelectorAll('[role=menu] *, [role=dialog] *, [data-radix-popper-content-wrapper] *')]"
                 ".filter(e => e.innerText && e.innerText.trim() === %s).pop()")
    browser.click(button_with_text("Columns"))
    for name in columns:
        browser.wait(f"!!({menu_item % json.dumps(name)})")
        browser.click(menu_item % json.dumps(name))
    browser.key("Escape")
    time.sleep(1)
    header = f"[...document.querySelectorAll('.ag-header-cell')].find(e => e.innerText.trim() === {json.dumps(columns[0])})"
    sorted_by = f"decodeURIComponent(location.href).includes('orderByKey=metrics.`{columns[0]}`&orderByAsc=%s')"
    browser.click(header)  # the first click on a metric's header sorts descending, the second ascending
    browser.wait(sorted_by % "false")
    browser.click(header)
    browser.wait(sorted_by % "true")
    order = browser.js("decodeURIComponent(location.href.match(/orderByKey=[^&]*/)[0])")
    time.sleep(2)
    names = browser.js("[...document.querySelectorAll('.ag-pinned-left-cols-container .ag-row')]"
                       ".sort((a, b) => a.getAttribute('row-index') - b.getAttribute('row-index'))"
                       ".map(r => r.innerText.trim().split('\\n')[1])")
    headers = browser.js("[...document.querySelectorAll('.ag-header-cell')].map(e => e.innerText.trim()).filter(Boolean)")
    print(f"  the runs table by hand, from the experiment's runs page: {browser.clicks} clicks; {order} ascending; "
          f"rows {names}; columns {headers}", flush=True)


SAMPLES_CARD = ("[...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')]"
                ".find(card => card.innerText.split('\\n')[0].trim() === 'samples')")


def button_with_text(text: str) -> str:
    return f"[...document.querySelectorAll('button')].find(b => b.innerText.trim() === '{text}')"


# ---------------------------------------------------------------------------- a small DevTools client


def find_chromium() -> str | None:
    """The Chromium (or Chrome) program on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium driven over the DevTools protocol: open, wait, click, type, screenshot.

    Elements are named by JavaScript expressions that return one element; `click` sends real
    mouse events at the element's centre, as React's menus expect.
    """

    KEYS = {"Escape": ("Escape", 27), "Tab": ("Tab", 9), "Backspace": ("Backspace", 8)}

    def __init__(self, profile: Path):
        self.profile = profile
        self.clicks, self.typed = 0, []  # since the last `open`

    def __enter__(self) -> "Browser":
        import websocket  # the websocket-client package

        chromium = find_chromium()
        if chromium is None:
            raise SystemExit("no Chromium found: apt-get install chromium")
        shutil.rmtree(self.profile, ignore_errors=True)
        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-crash-reporter",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = self.profile / "DevToolsActivePort"  # Chromium writes the port it picked here
        wait_until(port_file.exists, "Chromium to start", 60, self.process)
        port = port_file.read_text().split()[0]
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = next(target for target in pages if target["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.ids = itertools.count(1)
        self.set_size(WIDTH, HEIGHT)
        return self

    def __exit__(self, *error) -> None:
        self.socket.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return None if "exceptionDetails" in result else result["result"].get("value")

    def wait(self, condition: str, timeout: float = 90) -> None:
        wait_until(lambda: self.js(condition), condition, timeout)

    def open(self, url: str, until_text: str) -> None:
        """Go to `url` (the clicks and typing counted from here), wait for `until_text`, close the
        assistant's panel that MLflow opens by itself on a browser's first visit."""
        self.clicks, self.typed = 0, []
        self.call("Page.navigate", url=url)
        self.wait(f"document.body && document.body.innerText.includes({json.dumps(until_text)})")
        time.sleep(1)
        self.js("[...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === 'Close')?.click()")  # the assistant's panel

    def shown_image(self, key: str, timeout: float = 60) -> dict:
        """Wait (on the page's own DOM, scroll and load events) until the image card of `key` shows
        a loaded picture; its `src` (the artifact path, decoded), `naturalWidth` and `visible`, the
        fraction of its height inside the card (MLflow clips what the run's params push down). Scrolls the charts
        down to the card as a reader does (MLflow draws a card only once it is in view), never clicks.
        TimeoutError with what the card showed instead, e.g. MLflow's "No image logged at this step"."""
        script = """new Promise(resolve => {
          const find = () => [...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')]
            .find(card => card.innerText.split('\\n')[0].trim() === KEY);
          const scroller = () => {
            let e = document.querySelector('[data-testid=draggable-chart-cards-grid]');
            while (e && !(e.scrollHeight > e.clientHeight && /auto|scroll/.test(getComputedStyle(e).overflowY))) e = e.parentElement;
            return e;
          };
          const check = () => {
            const card = find();
            if (!card) { const s = scroller(); if (s) s.scrollBy(0, s.clientHeight / 2); return false; }
            card.scrollIntoView({block: 'center'});
            const image = [...card.querySelectorAll('img')].find(i => i.complete && i.naturalWidth > 0);
            if (!image) return false;
            const box = image.getBoundingClientRect(), frame = card.getBoundingClientRect();
            const seen = Math.max(0, Math.min(box.bottom, frame.bottom) - Math.max(box.top, frame.top));
            resolve({src: decodeURIComponent(image.src), naturalWidth: image.naturalWidth,
                     visible: box.height ? seen / box.height : 0});
            return true;
          };
          if (check()) return;
          const observer = new MutationObserver(() => check() && stop());
          const loaded = event => (event.type === 'scroll' || event.target.tagName === 'IMG') && check() && stop();
          const stop = () => { observer.disconnect(); document.removeEventListener('load', loaded, true);
            document.removeEventListener('scroll', loaded, true); clearTimeout(timer); };
          observer.observe(document.body, {subtree: true, childList: true, attributes: true});
          document.addEventListener('load', loaded, true);
          document.addEventListener('scroll', loaded, true);
          const timer = setTimeout(() => { stop(); const card = find();
            const empty = card && card.innerText.match(/No image logged at this step/);
            resolve({timeout: !card ? 'no card named ' + KEY : empty ? empty[0] : card.innerText.slice(0, 300)}); }, TIMEOUT);
        })""".replace("KEY", json.dumps(key)).replace("TIMEOUT", str(int(timeout * 1000)))
        self.wait("!!document.querySelector('[data-testid=draggable-chart-cards-grid]')", timeout)  # the charts' page
        result = self.call("Runtime.evaluate", expression=script, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"looking for the `{key}` image card failed: {result['exceptionDetails']}")
        found = result["result"]["value"]
        if "timeout" in found:
            shown = found["timeout"].replace("\n", " | ")
            raise TimeoutError(f"the `{key}` image card showed no picture within {timeout:.0f} s; it showed: {shown}")
        return found

    def centre(self, element: str) -> tuple[float, float]:
        found = self.js(f"(() => {{ const e = {element}; if (!e) return null; e.scrollIntoView({{block: 'nearest'}});"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if found is None:
            raise LookupError(f"no element: {element}")
        return found[0], found[1]

    def click(self, element: str) -> None:
        x, y = self.centre(element)
        self.clicks += 1
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        time.sleep(0.5)  # let React render what the click opened

    def key(self, name: str, modifiers: int = 0) -> None:
        key, code = self.KEYS[name] if name in self.KEYS else (name, ord(name.upper()))
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key if len(key) > 1 else f"Key{key.upper()}",
                      windowsVirtualKeyCode=code, modifiers=modifiers)

    def type_text(self, text: str) -> None:
        """Type into the focused field (counted as one action beside the clicks)."""
        self.call("Input.insertText", text=text)
        self.typed.append(text)

    def set_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path, height: float | None = None) -> None:
        """The window, or its top `height` pixels."""
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(height, self.height), "scale": 1} if height else None
        data = self.call("Page.captureScreenshot", format="png", **({"clip": clip} if clip else {}))["data"]
        Path(path).write_bytes(base64.b64decode(data))
        typed = f", typed {', '.join(map(repr, self.typed))}" if self.typed else ""
        print(f"  {path}: {self.clicks} clicks after opening the URL{typed}", flush=True)


if __name__ == "__main__":
    main()
