"""`make dashboard` on a study like the search's: the Makefile's command line serves it on
loopback, its JSON API lists the study and its trials, and Debian's headless chromium renders
the pages a user opens (the study list at the root URL, the study's trials) from them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from ..conftest import ROOT
from .conftest import free_port
from .test_plots_offline import CHROMIUM, NO_BROWSER

pytestmark = pytest.mark.e2e

STUDY = "search"
# number -> (train.lr, state, value, the values reported per epoch), as the search writes them
TRIALS = {
    0: (0.002, TrialState.COMPLETE, 0.8125, {1: 0.7904, 2: 0.8125}),
    1: (0.005, TrialState.COMPLETE, 0.8431, {1: 0.8117, 2: 0.8431}),
    2: (0.0091, TrialState.PRUNED, None, {1: 0.4102}),
}
STATES = {TrialState.COMPLETE: "Complete", TrialState.PRUNED: "Pruned"}


def make_study(db: Path) -> None:
    """A study as fashion_mnist_mlp/tools/search.py leaves it: maximized, its space's digest
    on the study, and each trial's `train.lr`, state, value and experiment name."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{db}", direction="maximize")
    study.set_user_attr("space", "0123abcd")
    lr = {"train.lr": FloatDistribution(1.0e-3, 1.0e-2, log=True)}
    for number, (value_lr, state, value, epochs) in TRIALS.items():
        study.add_trial(
            create_trial(
                state=state, params={"train.lr": value_lr}, distributions=lr, value=value,
                intermediate_values=epochs, user_attrs={"experiment": f"{STUDY}-{number}"},
            )
        )  # fmt: skip


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`make dashboard STORAGE=... PORT=...` from the repository root, in its own process
    group (make, uv, optuna-dashboard); its URL once it answers, and its log."""
    db = tmp_path / "study.db"
    make_study(db)
    port, log = free_port(), tmp_path / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "dashboard", f"STORAGE=sqlite:///{db}", f"PORT={port}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"make dashboard exited {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/meta", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"make dashboard did not answer in 30 s:\n{log.read_text()}")
                time.sleep(0.2)
        yield url, log
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.load(response)


class Text(HTMLParser):
    """The text a page shows: its text nodes outside <script> and <style>, one space apart."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self.hidden and data.strip():
            self.parts.append(data.strip())


def rendered(url: str, profile: Path) -> tuple[str, str]:
    """The DOM headless chromium rendered at `url` (the page's scripts ran, its API answered),
    and the text it shows."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    parser = Text()
    parser.feed(result.stdout)
    return result.stdout, " ".join(parser.parts)


def test_make_dashboard_serves_the_study_and_its_trials(
    dashboard: tuple[str, Path], tmp_path: Path
) -> None:
    url, log = dashboard

    # The JSON API the pages call: the study (its list carries no trial count in
    # optuna-dashboard 0.21: the study's own endpoint has the trials)
    studies = get_json(f"{url}/api/studies")["study_summaries"]
    assert [(s["study_id"], s["study_name"], s["directions"]) for s in studies] == [
        (1, STUDY, ["maximize"])
    ]
    assert studies[0]["user_attrs"] == [{"key": "space", "value": "0123abcd"}]
    detail = get_json(f"{url}/api/studies/1")
    assert detail["name"] == STUDY
    assert len(detail["trials"]) == len(TRIALS) == 3
    got = {
        t["number"]: (
            {p["name"]: p["param_internal_value"] for p in t["params"]},
            t["state"],
            t.get("values"),
            {a["key"]: a["value"] for a in t["user_attrs"]},
        )
        for t in detail["trials"]
    }
    assert got == {
        n: ({"train.lr": lr}, STATES[state], None if value is None else [value],
            {"experiment": f"{STUDY}-{n}"})
        for n, (lr, state, value, _) in TRIALS.items()
    }  # fmt: skip
    assert [t["number"] for t in detail["best_trials"]] == [1]

    if NO_BROWSER:  # the API was checked; the pages need the browser
        pytest.skip("no chromium (make test installs it): the rendered pages are not checked")
    assert CHROMIUM is not None, "CI installs chromium (make test): it is missing"

    # The address `make dashboard` names: the root redirects to the list of studies
    dom, text = rendered(f"{url}/", tmp_path / "profile")
    assert re.search(rf"\b1\. {STUDY} Direction: MAXIMIZE\b", text), text
    assert 'href="/dashboard/studies/1"' in dom

    # The study's trials, all three selected: states, values, lr and the experiment names
    _, text = rendered(f"{url}/dashboard/studies/1/trials?numbers=0,1,2", tmp_path / "profile")
    assert f"{STUDY} (id=1)" in text and "3 Trials" in text, text
    assert "Trial 0 Complete Trial 1 Complete Best Trial Trial 2 Pruned" in text, text
    details = re.split(r"(?=Trial \d \(trial_id=\d\))", text)[1:]  # each trial's panel
    assert len(details) == len(TRIALS), text
    for panel, (n, (lr, state, value, epochs)) in zip(details, TRIALS.items(), strict=True):
        assert panel.startswith(f"Trial {n} (trial_id={n + 1}) {STATES[state]} "), panel
        shown = re.search(r"\bValue ([\d.]+)", panel)
        assert (float(shown.group(1)) if shown else None) == value, panel  # none when pruned
        reported = " ".join(f"{step} {v}" for step, v in epochs.items())
        assert f"Intermediate Values {reported} " in panel, panel
        assert f"Parameter train.lr {lr} " in panel, panel
        assert f"User Attributes experiment {STUDY}-{n}" in panel, panel

    # What the pages asked the server for, and that it answered every request
    requests = re.findall(r'"GET (\S+) HTTP/1\.1" (\d{3})', log.read_text())
    assert {"/api/studies", "/api/studies/1?after=0"} <= {path for path, _ in requests}
    assert [(p, code) for p, code in requests if code[0] not in "23"] == []
