"""repro export: weight files from tiny run folders, loaded back by this package, timm and the released layout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

from repro.cli import main
from repro.config import load_config
from repro.errors import ReproError
from repro.export import export_weights, load_exported, read_export_record
from repro.models import create_model, reparameterize
from repro.models.slak import SLaK
from repro.train import list_checkpoints, train

# 115 training digits after the 10% held-out split: 3 optimizer steps of 32, one epoch.
TINY = ["data.train_limit=128", "train.epochs=1", "train.batch_size=32"]


def _run(tmp_path_factory, name: str, preset: str, *overrides: str) -> Path:
    out = tmp_path_factory.mktemp(name) / "run"
    summary = train(load_config(preset, overrides=[*TINY, *overrides]), out, progress=False)
    assert summary["status"] == "complete"
    return out


@pytest.fixture(scope="module")
def slak_run(tmp_path_factory):
    """A sparse SLaK (decomposed 51x5 + 5x51 + 5x5 kernels) with EMA weights."""
    return _run(tmp_path_factory, "slak", "quickstart-teacher", "train.ema_decay=0.9")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """An architecture timm defines itself, trained without EMA."""
    return _run(tmp_path_factory, "atto", "quickstart-student", "model.name=convnext_atto")


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _run_model(run: Path, entry: str, deploy: bool = False) -> torch.nn.Module:
    """The run's own model, built from its config, with the newest checkpoint's `entry` weights."""
    ckpt = torch.load(list_checkpoints(run / "checkpoints")[0], map_location="cpu", weights_only=False)
    model = create_model(ckpt["config"]["model"]["name"], num_classes=10, img_size=32)
    model.load_state_dict(ckpt[entry])
    model.eval()
    return reparameterize(model) if deploy else model


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_images())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_final_weights_round_trip_through_create_model(slak_run, tmp_path, suffix):
    summary = json.loads((slak_run / "summary.json").read_text())
    out = tmp_path / f"final{suffix}"
    res = export_weights(slak_run, out)
    assert res["weights"] == summary["final_is"] and res["form"] == "training"
    assert res["file_format"] == suffix[1:] and out.is_file()
    loaded = create_model("slak_micro", num_classes=10, img_size=32, pretrained_file=str(out))
    expected = _run_model(slak_run, "model_ema" if summary["final_is"] == "ema" else "model")
    assert torch.equal(_outputs(loaded), _outputs(expected))
    record = read_export_record(out)
    assert (record["model"], record["num_classes"], record["img_size"]) == ("slak_micro", 10, 32)
    assert record["selected"] == "final" and record["run"] == str(slak_run) and record["dataset"] == "digits"
    assert torch.equal(_outputs(load_exported(out)), _outputs(expected))


def test_raw_and_ema_weights_are_the_checkpoint_entries(slak_run, tmp_path):
    for which, entry in (("raw", "model"), ("ema", "model_ema")):
        out = tmp_path / f"{which}.pt"
        assert export_weights(slak_run, out, weights=which)["weights"] == which
        saved = torch.load(out, map_location="cpu", weights_only=True)["model"]
        ckpt = torch.load(list_checkpoints(slak_run / "checkpoints")[0], map_location="cpu", weights_only=False)
        assert saved.keys() == ckpt[entry].keys()
        assert all(torch.equal(saved[k], ckpt[entry][k]) for k in saved)
    raw = torch.load(tmp_path / "raw.pt", weights_only=True)["model"]
    ema = torch.load(tmp_path / "ema.pt", weights_only=True)["model"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # two different models, not one file twice


def test_released_slak_layout_loads_strictly_into_slak(slak_run, tmp_path):
    out = tmp_path / "released.pth"
    export_weights(slak_run, out, weights="raw")
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    state = ckpt["model"]
    # The official names: decomposed strips LoRA1/LoRA2 and the small kernel, each conv with its own BN.
    assert {"stages.0.0.large_kernel.LoRA1.conv.weight", "stages.0.0.large_kernel.LoRA2.bn.running_var",
            "stages.0.0.large_kernel.small_conv.conv.weight", "downsample_layers.0.0.weight",
            "head.weight"} <= set(state)
    model = SLaK(num_classes=10, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))  # slak_micro's numbers
    model.load_state_dict(state, strict=True)
    assert torch.equal(_outputs(model), _outputs(_run_model(slak_run, "model")))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_slak_deploy_form_matches_the_deployed_model(slak_run, tmp_path, suffix):
    out = tmp_path / f"deploy{suffix}"
    res = export_weights(slak_run, out, weights="ema", deploy=True)
    assert res["form"] == "deploy" and read_export_record(out)["form"] == "deploy"
    deployed = _run_model(slak_run, "model_ema", deploy=True)
    loaded = load_exported(out)
    assert set(loaded.state_dict()) == set(deployed.state_dict())
    assert any(".LoRA1_reparam." in k for k in loaded.state_dict())
    assert not any(".bn." in k for k in loaded.state_dict())  # every BatchNorm folded into its conv
    assert torch.allclose(_outputs(loaded), _outputs(deployed), atol=1e-5)
    # The deployed form computes what the trained form computes, up to float rounding.
    assert torch.allclose(_outputs(loaded), _outputs(_run_model(slak_run, "model_ema")), atol=1e-4)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_timm_loads_its_own_architecture(timm_run, tmp_path, suffix):
    out = tmp_path / f"atto{suffix}"
    res = export_weights(timm_run, out)
    assert res["weights"] == "raw"  # trained without EMA
    model = timm.create_model("convnext_atto", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=10))
    assert torch.equal(_outputs(model), _outputs(_run_model(timm_run, "model")))
    ours = create_model("convnext_atto", num_classes=10, pretrained_file=str(out))
    assert torch.equal(_outputs(ours), _outputs(model))


def test_deploy_of_a_model_without_deploy_form_says_training(timm_run, tmp_path):
    res = export_weights(timm_run, tmp_path / "x.pt", deploy=True)
    assert res["form"] == "training"


def test_best_weights_come_from_the_kept_file(slak_run, tmp_path):
    summary = json.loads((slak_run / "summary.json").read_text())
    kept = summary["weights_best"]  # the engine's weights-best.pt: the best held-out evaluation's weights
    res = export_weights(slak_run, tmp_path / "best.safetensors", weights="best")
    assert (res["selected"], res["weights"], res["split"], res["epoch"]) == ("best", kept["is"], "val", kept["epoch"])
    assert res["top1"] == summary["best_top1"] and res["source"] == str(slak_run / kept["file"])
    loaded = create_model("slak_micro", num_classes=10, img_size=32, pretrained_file=str(tmp_path / "best.safetensors"))
    expected = create_model("slak_micro", num_classes=10, img_size=32)
    expected.load_state_dict(torch.load(slak_run / kept["file"], weights_only=True)["model"])
    assert torch.equal(_outputs(loaded), _outputs(expected))
    # The kept file itself is a valid source too, exported as what it holds.
    assert export_weights(slak_run / kept["file"], tmp_path / "b2.pt")["selected"] == "best"

    run = tmp_path / "run"
    shutil.copytree(slak_run, run)
    (run / "weights-best.pt").unlink()
    with pytest.raises(ReproError, match="names weights-best.pt .* but the file is missing"):
        export_weights(run, tmp_path / "best.pt", weights="best")
    # A run trained before the engine kept its best weights says what is missing and what to do.
    del summary["weights_best"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReproError, match="no best weights: its summary.json has no 'weights_best'.*--weights final"):
        export_weights(run, tmp_path / "best.pt", weights="best")


def test_an_earlier_checkpoint_exports_raw_like_eval(slak_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(slak_run, run)
    newest = list_checkpoints(run / "checkpoints")[0]
    older = newest.with_name("ckpt-00000001.pt")
    shutil.copy(newest, older)
    assert export_weights(older, tmp_path / "o.pt")["weights"] == "raw"
    assert export_weights(older, tmp_path / "e.pt", weights="ema")["weights"] == "ema"


def test_bad_requests_say_what_to_do(timm_run, tmp_path):
    with pytest.raises(ReproError, match="no EMA weights.*export --weights raw"):
        export_weights(timm_run, tmp_path / "x.pt", weights="ema")
    with pytest.raises(ReproError, match="does not match the file name"):
        export_weights(timm_run, tmp_path / "x.pt", fmt="safetensors")
    with pytest.raises(ReproError, match="does not exist"):
        export_weights(tmp_path / "nope", tmp_path / "x.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(ReproError, match="records no config"):
        export_weights(plain, tmp_path / "x.pt")
    with pytest.raises(ReproError, match="--weights best needs a run folder"):
        export_weights(plain, tmp_path / "x.pt", weights="best")
    with pytest.raises(ReproError, match="holds no export record"):
        read_export_record(plain)


def test_cli_export_says_what_the_file_holds(slak_run, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(slak_run), "--weights", "ema", "--deploy", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (safetensors" in text and "form:  deploy (re-parameterised" in text
    assert "repro.export.load_exported(" in text
    assert main(["export", str(slak_run), "--out", str(tmp_path / "t.pt")]) == 0
    text = capsys.readouterr().out
    assert "form:  training" in text and "released SLaK layout" in text and "pretrained_file=" in text
    assert main(["export", str(slak_run), "--weights", "best", "--out", str(tmp_path / "b.pt")]) == 0
    assert "the run's best held-out evaluation (epoch 1, val top-1" in capsys.readouterr().out
    assert main(["export", str(slak_run), "--weights", "best", "--out", str(tmp_path / "b.txt"),
                 "--format", "safetensors"]) == 2
    assert "does not match the file name" in capsys.readouterr().err
