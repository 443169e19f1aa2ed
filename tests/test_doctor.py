"""`repro doctor`: versions, GPUs and kernel support, Kaggle context, precision (GPUs mocked)."""
import json
from types import SimpleNamespace

import pytest
import torch

from repro.cli import main
from repro.doctor import cudnn_text, doctor, format_doctor

# What a CUDA 12.8+ build of torch ships: no sm_50/sm_60 (Pascal P100) kernels any more.
CURRENT_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.fixture
def fake_gpus(monkeypatch):
    """Make torch.cuda report the given (name, capability) devices and arch list, without a GPU."""
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", "/nonexistent-kaggle-root")

    def install(gpus, arch_list=CURRENT_ARCHS):
        props = [SimpleNamespace(name=name, major=cap[0], minor=cap[1], total_memory=16 * 2**30)
                 for name, cap in gpus]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(gpus))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props[i])
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        # A T4 shows 16 GiB in its properties but leaves about 15 GB to a process (the driver's own share).
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (15_000 * 2**20, 16 * 2**30))
        monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: bool(gpus))
        monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    return install


def test_cpu_only(fake_gpus):
    fake_gpus([])
    d = doctor()
    assert (d["device"], d["gpu_count"], d["gpus"], d["precision"], d["error"]) == ("cpu", 0, [], "fp32", None)
    assert d["torch"] == torch.__version__ and d["python"].count(".") == 2 and d["timm"]
    assert d["in_kaggle"] is False and d["kaggle_run_type"] is None
    text = format_doctor(d)
    assert "torch" in text and "fp32" in text and "PROBLEM" not in text
    assert d["cudnn"] is None and "none (no CUDA device)" in text and "MiB" not in text


def test_t4_gets_fp16(fake_gpus):
    fake_gpus([("Tesla T4", (7, 5))])
    d = doctor()
    assert d["device"] == "cuda" and d["gpu_count"] == 1 and d["error"] is None
    assert d["gpus"][0]["capability"] == [7, 5] and d["gpus"][0]["sm"] == "sm_75"
    assert d["gpus"][0]["kernels_available"] is True
    assert d["precision"] == "fp16"
    assert "Tesla T4, compute capability 7.5 (sm_75)" in format_doctor(d)
    assert d["cudnn"] == 91002 and d["gpus"][0]["total_memory_mib"] == 16384
    assert d["gpus"][0]["free_memory_mib"] == 15000
    text = format_doctor(d)
    assert "9.10.2" in text and "16384 MiB total, 15000 MiB free" in text


def test_cudnn_versions_and_unknown_free_memory(fake_gpus, monkeypatch):
    assert (cudnn_text(90100), cudnn_text(91002), cudnn_text(8907), cudnn_text(None)) == (
        "9.1.0", "9.10.2", "8.9.7", "none")
    fake_gpus([("Tesla T4", (7, 5))])

    def no_context(i=0):
        raise RuntimeError("CUDA driver initialization failed")
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_context)
    d = doctor()
    assert d["gpus"][0]["free_memory_mib"] is None and "free memory unknown" in format_doctor(d)


@pytest.mark.parametrize("name,cap,precision", [("NVIDIA L4", (8, 9), "bf16"), ("NVIDIA A100", (8, 0), "bf16"),
                                                ("NVIDIA H100", (9, 0), "bf16"), ("Tesla V100", (7, 0), "fp16")])
def test_precision_by_capability(fake_gpus, name, cap, precision):
    fake_gpus([(name, cap)])
    assert doctor()["precision"] == precision


def test_p100_on_current_torch_is_refused(fake_gpus, capsys):
    fake_gpus([("Tesla P100-PCIE-16GB", (6, 0))])
    d = doctor()
    assert d["gpus"][0]["kernels_available"] is False
    assert d["error"] and "6.0" in d["error"] and "T4 or L4" in d["error"]
    assert "NO kernels" in format_doctor(d) and "PROBLEM" in format_doctor(d)
    assert main(["doctor"]) == 2
    out, err = capsys.readouterr()
    assert "Tesla P100" in out and "no kernel image" in err


def test_p100_with_a_legacy_build_runs_in_fp32(fake_gpus):
    fake_gpus([("Tesla P100-PCIE-16GB", (6, 0))], arch_list=["sm_50", "sm_60", "sm_70", "sm_75"])
    d = doctor()
    assert d["error"] is None and d["precision"] == "fp32"


def test_newer_gpu_runs_through_ptx(fake_gpus):
    fake_gpus([("Future GPU", (12, 1))], arch_list=["sm_90", "compute_90"])
    assert doctor()["gpus"][0]["kernels_available"] is True
    fake_gpus([("Future GPU", (12, 1))], arch_list=["sm_90"])
    assert doctor()["error"] is not None


def test_kaggle_context_and_json(fake_gpus, monkeypatch, capsys):
    fake_gpus([("Tesla T4", (7, 5)), ("Tesla T4", (7, 5))])
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert main(["doctor", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["in_kaggle"] is True and d["kaggle_run_type"] == "Batch" and d["gpu_count"] == 2
    assert "yes (Batch" in format_doctor(d)
