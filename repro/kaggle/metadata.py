"""kernel-metadata.json and dataset-metadata.json: builders and an offline validator.

The validator applies the rules the official client (kaggle 2.2.5, `kernels push` and `datasets create`)
enforces before it talks to the server, plus the ones this package depends on: `enable_internet` must be
written out (the client turns a missing value into True) and false (runs are offline by design), the title
must slugify to the kernel slug (the client only prints a warning and the server then picks another URL),
and `machine_shape` must be an accelerator Kaggle offers to users.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from ..errors import ReproError

KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"

# Accelerator ids accepted in `machine_shape`, as the 2.2.5 client and the kaggle-cli docs list them:
# NvidiaTeslaT4 is the editor's "GPU T4 x2" (the default GPU; a single T4 is no longer offered). Some ids serve
# only some competitions. The id is a request: the GPUs are counted at run time, never inferred from it.
GPU_SHAPES = ("NvidiaTeslaT4", "NvidiaL4X1", "NvidiaL4", "NvidiaTeslaA100", "NvidiaH100", "NvidiaRtxPro6000")
TPU_SHAPES = ("TpuV5E8", "TpuV6E8")
# Internal pools, not offered to users (kaggle-cli removed NvidiaTeslaT4Highmem from its docs as admin-only).
INTERNAL_SHAPES = ("NvidiaTeslaT4Highmem",)
# Retired: the server silently runs these on a replacement (a P100 request gets the default GPU).
RETIRED_SHAPES = ("NvidiaTeslaP100", "TpuV38", "Tpu1VmV38", "TpuV232", "TpuV2256")
SHAPE_ADVICE = "NvidiaTeslaT4 (GPU T4 x2) or NvidiaL4X1 (one L4)"

LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
BOOLEAN_FIELDS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
LIST_FIELDS = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources", "keywords")

# Licence names documented for dataset-metadata.json (Kaggle/kaggle-cli docs/datasets_metadata.md).
DATASET_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO",
    "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0",
    "GPL-3.0")


def shape_problem(shape: str) -> str | None:
    """Why `shape` is not an accelerator id to ask for ('...' after "machine_shape"), None when it is one."""
    if shape in RETIRED_SHAPES:
        return (f"'{shape}' is retired and Kaggle silently substitutes another accelerator (a P100 request runs "
                f"on the default GPU); ask for {SHAPE_ADVICE}")
    if shape in INTERNAL_SHAPES:
        return (f"'{shape}' is an internal Kaggle pool, not offered to users; NvidiaTeslaT4 already gives two "
                f"T4s (GPU T4 x2): ask for {SHAPE_ADVICE}")
    if shape not in GPU_SHAPES + TPU_SHAPES:
        return f"'{shape}' is not a Kaggle accelerator id; expected one of {', '.join(GPU_SHAPES + TPU_SHAPES)}"
    return None


def slugify(text: str) -> str:
    """Kaggle's URL slug of a title: ASCII-folded, lower case, runs of other characters turned into '-'."""
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # "1,000" -> "1000", as the client's slugify does
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _bool_problem(meta: dict, key: str) -> str | None:
    value = meta[key]
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return None
    return f"{key} should be true or false (a JSON boolean or the string \"true\"/\"false\"), found {value!r}"


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"


def _kernel_string_problem(ref: Any, where: str) -> str | None:
    """The client's check of 'owner/slug' or 'owner/slug/version' for kernels."""
    if not isinstance(ref, str) or "/" not in ref:
        return f"{where} should be 'owner/kernel-slug' or 'owner/kernel-slug/version', found {ref!r}"
    parts = ref.split("/")
    if len(parts) > 3 or not parts[0] or not parts[1]:
        return f"{where} should be 'owner/kernel-slug' or 'owner/kernel-slug/version', found {ref!r}"
    if len(parts[1]) < 5:
        return f"{where} '{ref}': the kernel slug '{parts[1]}' is shorter than five characters"
    if len(parts) == 3 and not parts[2]:
        return f"{where} '{ref}': the version after the last '/' is empty"
    return None


def _dataset_string_problem(ref: Any, where: str) -> str | None:
    if not isinstance(ref, str) or "/" not in ref:
        return f"{where} should be 'owner/dataset-slug' or 'owner/dataset-slug/version', found {ref!r}"
    parts = ref.split("/")
    if len(parts) > 3 or not parts[0] or not parts[1]:
        return f"{where} should be 'owner/dataset-slug' or 'owner/dataset-slug/version', found {ref!r}"
    if len(parts) == 3 and not parts[2].isdigit():
        return f"{where} '{ref}': a dataset version should be a number, found '{parts[2]}'"
    return None


def _model_string_problem(ref: Any, where: str) -> str | None:
    if not isinstance(ref, str) or ref.count("/") != 4 or not all(ref.split("/")):
        return f"{where} should be 'owner/model/framework/variation/version', found {ref!r}"
    if not ref.split("/")[4].isdigit():
        return f"{where} '{ref}': the version should be a number"
    return None


def validate_kernel_metadata(meta: Any, folder: str | Path | None = None, *,
                             allow_internet: bool = False) -> list[str]:
    """Problems `kaggle kernels push` (2.2.5) or this package would have with a kernel-metadata.json dict.

    With `folder`, also checks that `code_file` exists there and, for notebooks, is ipynb JSON. An empty
    list means valid.
    """
    if not isinstance(meta, dict):
        return [f"kernel metadata should be a JSON object, found {type(meta).__name__}"]
    problems: list[str] = []
    ref, id_no = meta.get("id"), meta.get("id_no")
    slug = None
    if not ref and not id_no:
        problems.append("id is missing: set it to 'owner/kernel-slug' (or give id_no)")
    elif ref:
        problem = _kernel_string_problem(ref, "id")
        if problem:
            problems.append(problem)
        elif ref.count("/") == 2:
            problems.append(f"id '{ref}' names a version; kernel metadata takes 'owner/kernel-slug' only")
        else:
            slug = ref.split("/")[1]
    title = meta.get("title")
    if title is not None:
        if not isinstance(title, str) or len(title) < 5:
            problems.append(f"title should be a string of at least five characters, found {title!r}")
        elif len(title) > 50:  # the server answers a longer one with a bare "500 internal server error"
            problems.append(f"title '{title}' has {len(title)} characters; Kaggle takes at most 50: shorten the "
                            "run name (or slug_prefix)")
        elif slug is not None and slugify(title) != slug.lower():
            problems.append(f"title '{title}' slugifies to '{slugify(title)}', not to the id's slug '{slug}'; "
                            "Kaggle would publish the notebook under another URL: make the two agree")
    code_file = meta.get("code_file")
    if not code_file or not isinstance(code_file, str):
        problems.append("code_file is missing: name the notebook (.ipynb) or script file in this folder")
    language = meta.get("language")
    if language not in LANGUAGES:
        problems.append(f"language should be one of {', '.join(LANGUAGES)}, found {language!r}")
    kernel_type = meta.get("kernel_type")
    if kernel_type not in KERNEL_TYPES:
        problems.append(f"kernel_type should be one of {', '.join(KERNEL_TYPES)}, found {kernel_type!r}")
    if kernel_type == "notebook" and isinstance(code_file, str) and code_file \
            and not code_file.endswith(".ipynb"):
        problems.append(f"kernel_type notebook needs an .ipynb code_file, found '{code_file}'")
    for key in BOOLEAN_FIELDS:
        if key in meta:
            problem = _bool_problem(meta, key)
            if problem:
                problems.append(problem)
    if "enable_internet" not in meta:
        problems.append("enable_internet is missing, and the client then turns internet ON; "
                        "write \"enable_internet\": false")
    elif not allow_internet and _bool_problem(meta, "enable_internet") is None \
            and _as_bool(meta["enable_internet"]):
        problems.append("enable_internet is true, but runs of this package are offline by design "
                        "(code and data come from attached datasets); set it to false")
    for key in LIST_FIELDS:
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key} should be a list of strings, found {value!r}")
            continue
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            check = {"dataset_sources": _dataset_string_problem, "kernel_sources": _kernel_string_problem,
                     "model_sources": _model_string_problem}.get(key)
            problem = check(item, where) if check else None
            if problem:
                problems.append(problem)
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        problems.append(f"docker_image_pinning_type should be one of {', '.join(PINNING_TYPES)}, "
                        f"found {pinning!r}")
    image = meta.get("docker_image")
    if image is not None and (not isinstance(image, str) or not image):
        problems.append(f"docker_image should be an image name such as gcr.io/kaggle-images/python@sha256:..., "
                        f"found {image!r}")
    shape = meta.get("machine_shape")
    if shape is not None:
        problem = shape_problem(shape)
        if problem:
            problems.append(f"machine_shape {problem}")
        elif shape in GPU_SHAPES and "enable_gpu" in meta and _bool_problem(meta, "enable_gpu") is None \
                and not _as_bool(meta["enable_gpu"]):
            problems.append(f"machine_shape '{shape}' is a GPU but enable_gpu is false; set enable_gpu true")
    if folder is not None and isinstance(code_file, str) and code_file:
        path = Path(folder) / code_file
        if not path.is_file():
            problems.append(f"code_file '{code_file}' not found in {folder}")
        elif kernel_type == "notebook":
            try:
                nb = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
                    raise ValueError("no 'cells' list")
            except ValueError as exc:
                problems.append(f"code_file {path} is not ipynb JSON ({exc})")
    return problems


def validate_dataset_metadata(meta: Any, folder: str | Path | None = None) -> list[str]:
    """Problems `kaggle datasets create` (2.2.5) would have with a dataset-metadata.json dict; [] means valid."""
    if not isinstance(meta, dict):
        return [f"dataset metadata should be a JSON object, found {type(meta).__name__}"]
    problems: list[str] = []
    ref = meta.get("id")
    if not isinstance(ref, str) or ref.count("/") != 1 or not all(ref.split("/")):
        problems.append(f"id should be 'owner/dataset-slug', found {ref!r}")
    else:
        slug = ref.split("/")[1]
        if not 6 <= len(slug) <= 50:
            problems.append(f"dataset slug '{slug}' has {len(slug)} characters; it must have 6 to 50")
        if slug == "INSERT_SLUG_HERE":
            problems.append("id still holds the template's INSERT_SLUG_HERE; choose a slug")
        elif slug != slugify(slug):
            problems.append(f"dataset slug '{slug}' should use lower-case letters, digits and '-' "
                            f"(e.g. '{slugify(slug)}')")
    title = meta.get("title")
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        problems.append(f"title should be a string of 6 to 50 characters, found {title!r}")
    elif title == "INSERT_TITLE_HERE":
        problems.append("title still holds the template's INSERT_TITLE_HERE; choose a title")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        problems.append(f"licenses should hold exactly one entry like [{{\"name\": \"CC0-1.0\"}}], found {licenses!r}")
    elif not isinstance(licenses[0], dict) or "name" not in licenses[0]:
        problems.append(f"licenses[0] should be an object with a 'name', found {licenses[0]!r}")
    elif licenses[0]["name"] not in DATASET_LICENSES:
        problems.append(f"licence '{licenses[0]['name']}' is not one Kaggle documents; "
                        f"use one of {', '.join(DATASET_LICENSES)}")
    subtitle = meta.get("subtitle")
    if subtitle and (not isinstance(subtitle, str) or not 20 <= len(subtitle) <= 80):
        problems.append(f"subtitle should have 20 to 80 characters, found {subtitle!r}")
    keywords = meta.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        problems.append(f"keywords should be a list of strings, found {keywords!r}")
    resources = meta.get("resources") or []
    seen: set[str] = set()
    for i, item in enumerate(resources if isinstance(resources, list) else [None]):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            problems.append(f"resources[{i}] should be an object with a 'path', found {item!r}")
            continue
        if item["path"] in seen:
            problems.append(f"resources: path '{item['path']}' is listed more than once")
        seen.add(item["path"])
        if folder is not None and not (Path(folder) / item["path"]).is_file():
            problems.append(f"resources: '{item['path']}' does not exist in {folder}")
    return problems


def write_metadata(folder: str | Path, meta: dict, kind: str) -> Path:
    """Validate `meta` (kind 'kernel' or 'dataset') against `folder` and write it; refuse invalid metadata."""
    folder = Path(folder)
    if kind == "kernel":
        problems, name = validate_kernel_metadata(meta, folder), KERNEL_METADATA_FILE
    else:
        problems, name = validate_dataset_metadata(meta, folder), DATASET_METADATA_FILE
    if problems:
        raise ReproError(f"refusing to write {folder / name}, Kaggle would reject it or run it wrongly:\n  - "
                         + "\n  - ".join(problems))
    path = folder / name
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_metadata(path: str | Path) -> dict:
    """Read a kernel- or dataset-metadata.json file (or the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / (KERNEL_METADATA_FILE if (path / KERNEL_METADATA_FILE).is_file() else DATASET_METADATA_FILE)
    if not path.is_file():
        raise ReproError(f"no {KERNEL_METADATA_FILE} or {DATASET_METADATA_FILE} in {path.parent}; "
                         "pass a folder made by `repro kaggle prepare` or `repro kaggle bundle`")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ReproError(f"{path} is not valid JSON ({exc}); fix or regenerate it") from None
