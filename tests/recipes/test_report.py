"""modelpress report: a self-contained HTML page (and Markdown), checked in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from modelpress.core.errors import ModelFileError
from modelpress.measure.run_plots import pareto_front
from modelpress.recipes import parse_recipe, run_recipe, tune_recipe, write_report

CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECIPE = {"name": "report-check", "data": {"name": "digits", "limit": 240, "limit_test": 120},
          "measure": {"latency": True},
          "stages": [{"kind": "train", "name": "teacher", "model": "mlp:48", "epochs": 2, "lr": 0.1},
                     {"kind": "prune", "sparsity": 0.8, "retrain_epochs": 1},
                     {"kind": "quantize", "bits": 3, "finetune_epochs": 1},
                     {"kind": "encode"},
                     {"kind": "export"}]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rundir = tmp_path_factory.mktemp("report") / "run"
    run_recipe(parse_recipe(RECIPE), rundir, log=lambda line: None)
    html_path, md_path = write_report(rundir)
    return rundir, html_path, md_path


def test_pareto_front_keeps_only_undominated_points():
    points = [(100, 0.90), (50, 0.85), (50, 0.80), (200, 0.90), (20, 0.50), (300, 0.95)]
    assert pareto_front(points) == [4, 1, 0, 5]  # (50, 0.80) and (200, 0.90) are beaten
    assert pareto_front([(1, 0.5), (1, 0.5)]) == [0, 1]  # equal points beat neither


@pytest.mark.slow
def test_html_is_self_contained_and_markdown_has_the_table(report):
    rundir, html_path, md_path = report
    page = html_path.read_text()
    assert html_path == rundir / "report.html" and md_path == rundir / "report.md"
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing is fetched from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # accuracy-vs-size, per-layer bars, and one histogram figure per PyTorch-readable stage (not the ONNX one)
    assert len(images) == 2 + 4
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    index = json.loads((rundir / "run.json").read_text())
    for entry in index["stages"]:
        assert f"<td>{entry['name']}</td>" in page
    md = md_path.read_text()
    assert "| Stage | Kind | Test accuracy |" in md and md.count("\n| ") == 1 + 5
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (md_path.parent / link).read_bytes().startswith(PNG_MAGIC)
    encode = next(e for e in index["stages"] if e["name"] == "encode")
    assert f"Pareto front: {encode['name']}" in md  # the smallest file is always on the front


def test_report_of_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="not a modelpress run folder"):
        write_report(tmp_path)


@pytest.mark.slow
def test_report_of_a_tune_folder_plots_every_trial(tmp_path):
    raw = json.loads(json.dumps(RECIPE))
    raw["stages"] = raw["stages"][:2]
    raw["stages"][1]["sparsity"] = {"tune": [0.5, 0.9]}
    raw["measure"]["latency"] = False
    tune_recipe(parse_recipe(raw), tmp_path / "tune", trials=2, log=lambda line: None)
    html_path, md_path = write_report(tmp_path / "tune")
    md = md_path.read_text()
    assert "2 trials, best trial" in md and "Every stage of every trial" in md
    assert html_path.read_text().count("data:image/png;base64,") >= 2


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out;
    messages are JSON ended by a NUL byte): no websocket, no extra package."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout, self.events, self.next_id, self.buffer = timeout, [], 0, b""
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="mp-chromium-")

        def child_fds() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        wanted = self.next_id
        reply = self.wait(lambda m: m.get("id") == wanted)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait(self, predicate) -> dict:
        end = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                self.events.append(message)
                if predicate(message):
                    return message
            ready, _, _ = select.select([self.from_chrome], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self.buffer += chunk

    def close(self) -> None:
        try:
            os.write(self.to_chrome, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_chrome, self.from_chrome):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def _problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the DevTools events."""
    found = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"log: {params['entry'].get('text')}")
    return found


def open_in_chromium(path: Path) -> tuple[list, list[str], dict]:
    """Load ``path``; return its images' ``[complete, naturalWidth, naturalHeight]``, the problems seen,
    and the page's title and table row count."""
    browser = DevTools()
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session)
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired")
        script = ("JSON.stringify({images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                  "i.naturalHeight]), title: document.title, rows: document.querySelectorAll('tbody tr').length})")
        value = json.loads(browser.send("Runtime.evaluate", {"expression": script, "returnByValue": True}, session)["result"]["value"])
        time.sleep(0.3)  # let late console messages arrive
        browser.send("Runtime.evaluate", {"expression": "1"}, session)
        return value.pop("images"), _problems(browser.events), value
    finally:
        browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium (CI installs it)")
def test_the_page_renders_in_headless_chromium_with_every_image_loaded(report, tmp_path):
    _, html_path, _ = report
    images, problems, page = open_in_chromium(html_path)
    assert problems == []
    assert len(images) == 6 and all(complete and width > 100 and height > 100 for complete, width, height in images)
    assert page == {"title": "modelpress run: report-check", "rows": 5}

    # the check itself can fail: a broken image and a script error are both caught
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><img src="missing.png"><img src="data:image/png;base64,AAAA">'
                      '<script>console.error("bad"); undefinedFunction();</script></body></html>')
    images, problems, _ = open_in_chromium(broken)
    assert [width for _, width, _ in images] == [0, 0]
    assert any("console.error" in p for p in problems) and any("exception" in p for p in problems)
    assert any("ERR_FILE_NOT_FOUND" in p for p in problems)
