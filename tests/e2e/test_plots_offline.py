"""`dvc plots show` on a machine without internet: the page draws every chart in a real headless
browser (Debian's chromium), logs no error, and makes no request off the machine. The same
harness on DVC's own page (scripts from a CDN) sees blank charts and the CDN requests."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from dvc_render.html import PAGE_HTML

from fashion_mnist_mlp.tools.plots import OFFLINE_TEMPLATE, offline_template

from ..conftest import ROOT
from .conftest import Project

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium")
# CI installs it (make test): there a missing browser fails the tests instead of skipping them
NO_BROWSER = CHROMIUM is None and not os.environ.get("CI")

# Added to a copy of the page: errors and uncaught exceptions, the resources the page fetched,
# and what each chart's div holds, written into the DOM that chromium dumps
PROBE_HEAD = """<script>
window.__errors = [];
const error = console.error;
console.error = (...args) => { window.__errors.push(args.map(String).join(" ")); error(...args); };
window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
</script>"""
PROBE_END = """<script>
setTimeout(() => {
  const charts = CHART_IDS.map((id) => document.getElementById(id));
  document.body.setAttribute("data-probe", JSON.stringify({
    errors: window.__errors,
    resources: performance.getEntriesByType("resource").map((r) => r.name),
    charts: charts.length,
    drawn: charts.filter((d) => d.querySelector("svg.marks, canvas.marks")).length,
  }));
}, 4000);
</script>"""


class Recorder(http.server.BaseHTTPRequestHandler):
    """A proxy on loopback that answers every request with 502 and remembers its host."""

    hosts: ClassVar[list[str]]  # each fixture's subclass has its own

    def answer(self) -> None:
        host = self.path.split("/")[2] if "://" in self.path else self.path
        self.hosts.append(host.split(":")[0])
        self.send_error(502)

    do_GET = do_POST = do_HEAD = do_CONNECT = answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[tuple[int, list[str]]]:
    hosts: list[str] = []
    handler = type("Handler", (Recorder,), {"hosts": hosts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], hosts
    server.shutdown()


def open_in_chromium(page: Path, port: int, profile: Path) -> dict:
    """Load a copy of `page` with the probe; what the probe saw."""
    probed = page.with_name("probed.html")
    html = page.read_text()
    ids = re.findall(r"vegaEmbed\('#([^']+)'", html)  # DVC's chart divs (dvc_render.vega)
    end = PROBE_END.replace("CHART_IDS", json.dumps(ids))
    head, body = html.replace("<head>", "<head>" + PROBE_HEAD, 1).rsplit("</body>", 1)
    probed.write_text(head + end + "</body>" + body)  # the bundle's code may say </body>
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>",
         "--virtual-time-budget=20000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.index('data-probe="') + len('data-probe="')
    raw = result.stdout[start : result.stdout.index('"', start)]
    return json.loads(raw.replace("&quot;", '"').replace("&amp;", "&"))


def page_hosts(hosts: list[str], page: Path) -> set[str]:
    """The recorded hosts the page names (chromium itself also calls its update servers)."""
    html = page.read_text()
    return {h for h in hosts if h in html}


@pytest.mark.skipif(NO_BROWSER, reason="no chromium (make test installs it)")
def test_dvc_plots_show_draws_every_chart_offline(
    reproduced: Project, tmp_path: Path, proxy: tuple[int, list[str]]
) -> None:
    port, hosts = proxy
    reproduced.run("dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    page = tmp_path / "plots" / "index.html"
    seen = open_in_chromium(page, port, tmp_path / "profile")
    assert seen["charts"] >= 9 and seen["drawn"] == seen["charts"], seen
    assert seen["errors"] == []
    assert [r for r in seen["resources"] if not r.startswith("file:")] == []
    assert page_hosts(hosts, page) == set() and "cdn.jsdelivr.net" not in hosts


@pytest.mark.skipif(NO_BROWSER, reason="no chromium (make test installs it)")
def test_the_harness_sees_dvcs_own_page_fail_offline(
    reproduced: Project, tmp_path: Path, proxy: tuple[int, list[str]]
) -> None:
    port, hosts = proxy
    template = tmp_path / "dvc_page.html"
    template.write_text(PAGE_HTML)  # DVC's default: vega from cdn.jsdelivr.net
    reproduced.run(
        "dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path / "plots")
    )
    seen = open_in_chromium(tmp_path / "plots" / "index.html", port, tmp_path / "profile")
    assert seen["charts"] >= 9 and seen["drawn"] == 0, seen
    assert any("vegaEmbed is not defined" in e for e in seen["errors"]), seen["errors"]
    assert "cdn.jsdelivr.net" in hosts


def test_the_committed_page_template_is_the_locked_vl_convert_bundle() -> None:
    assert (ROOT / OFFLINE_TEMPLATE).read_text() == offline_template(), (
        "python -m fashion_mnist_mlp.tools.plots"
    )
