"""`repro kaggle bundle`: the package as a Kaggle dataset that notebooks install offline.

The bundle folder holds a py3-none-any wheel of this package, wheels of any requirement the Kaggle image
lacks, and dataset-metadata.json. Upload it once per code change (`kaggle datasets create -p DIR`, then
`kaggle datasets version -p DIR -m MSG`); notebooks prepared by `repro kaggle prepare` run
`pip install --no-index --find-links <the mounted folder> repro-lkt`, which resolves every requirement from
what the image already has, so Kaggle's CUDA torch is never replaced.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import venv
import zipfile
from pathlib import Path
from typing import Sequence

from ..errors import ReproError
from .metadata import DATASET_METADATA_FILE, write_metadata
from .prepare import DEFAULT_CODE_DATASET, DISTRIBUTION, WHEEL_PREFIX, install_cell_source

# Distributions the Kaggle Python image ships; the bundle carries wheels for any other requirement.
ASSUMED_ON_KAGGLE = ("torch", "torchvision", "timm", "safetensors", "numpy", "scipy", "pyyaml", "tqdm", "pandas",
                     "matplotlib", "scikit-learn", "papermill", "nbformat", "ipykernel", "kaggle")
# Files of a source checkout that building the wheel needs (besides the package itself).
_BUILD_FILES = ("setup.cfg", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "LICENSE.txt")


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form (lower case, runs of -_. as one '-')."""
    return re.sub(r"[-_.]+", "-", name).lower()


def source_root() -> Path:
    """The source checkout this package was imported from (holds setup.cfg or pyproject.toml)."""
    import repro
    root = Path(repro.__file__).resolve().parent.parent
    if not ((root / "setup.cfg").is_file() or (root / "pyproject.toml").is_file()):
        raise ReproError(f"repro is imported from {root}, which is not a source checkout (no setup.cfg or "
                         "pyproject.toml); run `repro kaggle bundle` from a clone of the repository")
    return root


def build_wheel(dest: str | Path, root: Path | None = None) -> Path:
    """Build the py3-none-any wheel of this package into `dest` without network or build isolation."""
    root = source_root() if root is None else Path(root)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="repro-wheel-") as tmp:
        # A copy keeps build/ and *.egg-info out of the checkout (and away from concurrent builds).
        src = Path(tmp) / "src"
        shutil.copytree(root / "repro", src / "repro",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
        for name in _BUILD_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        out = Path(tmp) / "wheels"
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--no-index", "--quiet", "--wheel-dir", str(out), str(src)],
                              capture_output=True, text=True)
        wheels = sorted(out.glob(f"{WHEEL_PREFIX}*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise ReproError(f"building the wheel failed (pip wheel status {proc.returncode}):\n"
                             f"{(proc.stdout + proc.stderr).strip()[-3000:]}\n"
                             "it needs setuptools>=61 and wheel installed (pip install 'repro-lkt[dev]')")
        if not wheels[0].name.endswith("-py3-none-any.whl"):
            raise ReproError(f"the wheel {wheels[0].name} is not pure Python (py3-none-any); "
                             "Kaggle needs a wheel that installs on any platform")
        target = dest / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def wheel_requirements(wheel: str | Path) -> list[str]:
    """The unconditional requirements (Requires-Dist without extras) of a wheel, as normalized names."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            names.append(normalize(re.match(r"[A-Za-z0-9._-]+", line.split(":", 1)[1].strip()).group(0)))
    return names


def download_wheels(names: Sequence[str], dest: str | Path) -> list[Path]:
    """`pip download --no-deps` wheels of `names` into `dest` (from the configured index or local cache)."""
    dest = Path(dest)
    before = set(dest.glob("*.whl"))
    for name in names:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--quiet", "--dest", str(dest), name], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReproError(f"could not get a wheel of '{name}' (pip download status {proc.returncode}): "
                             f"{proc.stderr.strip()[-1500:]}\npip needs the package index, or a local folder "
                             "of wheels through PIP_FIND_LINKS (with PIP_NO_INDEX=1) to fetch it")
    return sorted(set(dest.glob("*.whl")) - before)


def dataset_metadata(owner: str, slug: str = DEFAULT_CODE_DATASET, title: str | None = None,
                     license_name: str = "other") -> dict:
    """dataset-metadata.json for the code bundle."""
    from .. import __version__
    return {
        "id": f"{owner}/{slug}",
        "title": title or f"{DISTRIBUTION} code bundle",
        "subtitle": "Offline wheel of repro-lkt for Kaggle notebooks",
        "description": (f"Wheel of {DISTRIBUTION} {__version__} (import name `repro`), made by `repro kaggle "
                        "bundle`. Install in a notebook without internet: `pip install --no-index "
                        f"--find-links /kaggle/input/{slug} {DISTRIBUTION}`. The code is MIT-licensed."),
        "licenses": [{"name": license_name}],
        "keywords": [],
    }


def build_bundle(out: str | Path, *, owner: str | None = None, slug: str = DEFAULT_CODE_DATASET,
                 include: Sequence[str] = (), title: str | None = None, license_name: str = "other") -> dict:
    """Write the code dataset folder: the package wheel, extra wheels and dataset-metadata.json.

    Requirements missing from ASSUMED_ON_KAGGLE are downloaded as wheels, as is every name in `include`.
    Returns {'folder', 'wheels', 'downloaded', 'metadata'}.
    """
    owner = owner or os.environ.get("KAGGLE_USERNAME")
    if not owner:
        raise ReproError("the dataset id needs your Kaggle user name: pass --owner NAME (or set KAGGLE_USERNAME)")
    meta = dataset_metadata(owner, slug, title, license_name)
    out = Path(out)
    if out.exists() and any(p for p in out.iterdir() if p.suffix != ".whl" and p.name != DATASET_METADATA_FILE):
        raise ReproError(f"{out} holds other files than a previous bundle; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()  # a stale wheel of another version would make pip's choice ambiguous
    wheel = build_wheel(out)
    assumed = {normalize(n) for n in ASSUMED_ON_KAGGLE}
    missing = [n for n in wheel_requirements(wheel) if n not in assumed]
    extra = list(dict.fromkeys([*missing, *(normalize(n) for n in include)]))
    downloaded = download_wheels(extra, out) if extra else []
    write_metadata(out, meta, "dataset")
    return {"folder": str(out), "wheels": sorted(p.name for p in out.glob("*.whl")),
            "downloaded": [p.name for p in downloaded], "metadata": meta}


def _outer_site_dirs() -> list[Path]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [Path(d) for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _is_this_package(entry: str) -> bool:
    name = entry.lower()
    return name == "repro" or name.startswith(("repro_lkt", "repro-lkt")) or \
        ("editable" in name and "repro" in name) or name.endswith((".pth", ".egg-link"))


def verify_bundle(folder: str | Path, *, timeout: float = 600) -> dict:
    """Install the bundle the way a Kaggle notebook does, in a scratch environment, and import it.

    The scratch venv sees this environment's packages (torch etc., standing in for the Kaggle image) but
    not this package; the bundle is placed under a simulated /kaggle/input/<slug>/ and the prepared
    notebooks' install cell is run there. Returns {'python', 'repro_file', 'version'}.
    """
    folder = Path(folder)
    meta = json.loads((folder / DATASET_METADATA_FILE).read_text()) if (folder / DATASET_METADATA_FILE).is_file() \
        else {"id": f"owner/{DEFAULT_CODE_DATASET}"}
    slug = meta["id"].split("/")[-1]
    with tempfile.TemporaryDirectory(prefix="repro-verify-") as tmp:
        tmp = Path(tmp)
        venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(tmp / "venv")
        python = tmp / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1", REPRO_KAGGLE_ROOT=str(tmp / "kaggle"))
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, env=env, check=True).stdout.strip()
        # The outer packages are exposed through a folder of links that leaves out this package, so pip must
        # install the wheel instead of finding an (editable) install of the checkout.
        view = tmp / "outer-site"
        view.mkdir()
        for site_dir in _outer_site_dirs():
            for entry in site_dir.iterdir():
                if not _is_this_package(entry.name) and not (view / entry.name).exists():
                    (view / entry.name).symlink_to(entry)
        Path(purelib, "outer-site.pth").write_text(str(view) + "\n")
        shutil.copytree(folder, tmp / "kaggle" / "input" / slug)
        steps = [("install cell", install_cell_source(slug)),
                 ("import", "import json, repro, repro.kaggle; "
                            "print(json.dumps({'repro_file': repro.__file__, 'version': repro.__version__}))")]
        for what, code in steps:
            proc = subprocess.run([str(python), "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            if proc.returncode != 0:
                raise ReproError(f"the bundle in {folder} does not install offline ({what} failed, status "
                                 f"{proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if not Path(result["repro_file"]).resolve().is_relative_to((tmp / "venv").resolve()):
            raise ReproError(f"after the offline install, repro was imported from {result['repro_file']} "
                             "instead of the scratch environment; the check is not conclusive")
        result["python"] = str(python)
        return result
