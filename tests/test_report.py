"""``maskdit report`` writes one HTML file that needs no network: checked by parsing, and by headless
Chromium when it is installed."""

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import SMALL as BASE
from PIL import Image

from maskdit.cli.app import main
from maskdit.evaluate.report import throughput

SMALL = [*BASE, "sample.steps=2", "log_every=1", "ckpt_every=2", "keep_checkpoints=3", "lr=0.000777"]


@pytest.fixture(scope="module")
def report(tmp_path_factory, run_factory):
    root = tmp_path_factory.mktemp("report")
    run = run_factory(*SMALL, "steps=4", "eval_every=2", "eval_num=20")  # read only: the report goes to root
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test cache fixture
        mp.setenv("MASKDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        out = root / "out" / "page.html"
        assert main(["report", str(run), "--out", str(out), "--per-class", "2"]) == 0
    return run, out


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained(report):
    _, out = report
    html = out.read_text()
    assert 'src="http' not in html and 'href="http' not in html and "url(" not in html
    page = Collect()
    page.feed(html)
    assert not [t for t, a in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    assert not [a for t, a in page.tags if any(str(v).startswith(("http:", "https:", "//")) for v in a.values())]
    # training curves, evaluation curves, and one sample grid for each of the two checkpoints
    assert len(page.images) == 4
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            im.verify()


def test_report_shows_config_throughput_evals_and_samples(report):
    run, out = report
    page = Collect()
    page.feed(out.read_text())
    text = " ".join(page.text)
    assert str(run) in text and "model.hidden_size" in text and "0.000777" in text  # the config
    assert "steps/s over all logged steps" in text
    assert "domain_fid" in text and "class_accuracy" in text
    assert "step 2: 20 samples from the EMA weights, sampler=heun, steps=2" in text
    assert "step 4: 20 samples" in text


def test_throughput_weights_intervals_by_steps():
    records = [{"step": 10, "steps_per_s": 10.0}, {"step": 30, "steps_per_s": 5.0}, {"step": 30, "eval": {}}]
    tp = throughput(records)
    assert tp["train_seconds"] == pytest.approx(1 + 4) and tp["steps_per_s"] == pytest.approx(30 / 5)


def test_report_refuses_a_non_html_name_and_a_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.txt")]) == 2
    assert "give a file name ending in .html" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium installed: the report is checked by parsing only")
def test_report_renders_offline_in_headless_chromium(report, tmp_path):
    _, out = report
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2000", f"--screenshot={shot}", out.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size[0] > 100 and len(np.unique(np.asarray(im.convert("L")))) > 10  # something was drawn
