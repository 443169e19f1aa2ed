"""repro.logs: notebook logging that keeps levels apart in papermill.log, without tqdm's IProgress warning."""
from __future__ import annotations

import logging
import warnings

import pytest

from repro.logs import notebook_logging


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_info_goes_to_stdout_and_warnings_to_stderr_once(root_logging, capsys):
    notebook_logging()
    notebook_logging()  # running the setup cell again replaces the handlers
    log = logging.getLogger("repro.test")
    log.debug("hidden")
    log.info("training 8 steps")
    log.warning("a partial ImageNet val")
    captured = capsys.readouterr()
    assert captured.out == "training 8 steps\n"
    assert captured.err == "a partial ImageNet val\n"


def test_the_ipython_progress_warning_is_silenced(root_logging):
    from tqdm import TqdmWarning

    notebook_logging()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        notebook_logging()  # the filter is installed after simplefilter, as it is in a kernel
        warnings.warn("IProgress not found. Please update jupyter and ipywidgets.", TqdmWarning)
        warnings.warn("another warning", UserWarning)
    assert [str(w.message) for w in caught] == ["another warning"]


def test_papermill_logs_library_records_at_their_own_level(tmp_path, caplog):
    """What `repro batch` and Kaggle record: a notebook's output through papermill's logger."""
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import logging\nfrom repro.logs import notebook_logging\nnotebook_logging()\nimport timm\n"
        "logging.getLogger('repro.train').info('epoch 1 step 4: val top1 62.50')\n"
        "logging.getLogger('repro.train').warning('train.min_lr is above the peak learning rate')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "in.ipynb"))
    with caplog.at_level(logging.INFO, logger="papermill"):
        papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   log_output=True, progress_bar=False)
    records = [(r.levelname, r.getMessage().strip()) for r in caplog.records if r.name.startswith("papermill")]
    assert ("INFO", "epoch 1 step 4: val top1 62.50") in records
    assert ("WARNING", "train.min_lr is above the peak learning rate") in records
    assert not any("IProgress" in message for _, message in records)
