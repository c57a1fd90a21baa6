"""Start-up: commands import only what they need (issue 19). Checked in fresh processes, by sys.modules.

`--help`, every command's `--help`, `--version`, `models` and the napari reader import neither torch nor
MONAI; generate imports MONAI's network modules leanly (none of MONAI's optional heavy dependencies), gives
the same result as a full `import monai`, and falls back to the full import where the lean one fails.
Times are in benchmarks/startup.py, not here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402

from napari_medgen._paths import sample_dir  # noqa: E402
from napari_medgen.cli import COMMANDS  # noqa: E402
from napari_medgen.engine.io import read_volume, write_volume  # noqa: E402
from napari_medgen.engine.model.networks import MONAI_IMPORT_ENV  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

HEAVY = ("torch", "monai")
MONAI_EXTRAS = ("matplotlib", "pandas", "sklearn", "skimage", "nibabel", "scipy.signal")

_REPORT = """
import json, sys
code = None
try:
    {body}
except SystemExit as stop:
    code = stop.code
monai = sys.modules.get("monai")
print(json.dumps({{"modules": sorted(k for k in sys.modules if k.split(".")[0] in {names!r} or k in {names!r}),
                  "monai_kind": type(monai).__name__ if monai is not None else None, "code": code}}), file=sys.stderr)
"""


def _fresh(body: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run `body` in a fresh interpreter; which of torch / monai / MONAI's extras it imported, and its exit code."""
    code = _REPORT.format(body=body.replace("\n", "\n    "), names=HEAVY + MONAI_EXTRAS)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})}, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stderr.strip().splitlines()[-1])


def _imported(report: dict, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if any(m == name or m.startswith(name + ".") for m in report["modules"])]


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["models"]] + [[name, "--help"] for name in COMMANDS],
    ids=lambda argv: " ".join(argv),
)
def test_help_version_and_models_import_neither_torch_nor_monai(argv):
    report = _fresh(f"from napari_medgen.cli import main\nmain({argv!r})")
    assert report["code"] in (None, 0)
    assert _imported(report, HEAVY) == []


def test_the_napari_reader_imports_neither_torch_nor_monai():
    path = sample_dir() / "mni152_tissue_labels_2mm.nii.gz"
    report = _fresh(
        "from napari_medgen.napari_io import napari_get_reader\n"
        f"layers = napari_get_reader({str(path)!r})({str(path)!r})\n"
        "assert layers and layers[0][0].ndim == 3"
    )
    assert _imported(report, HEAVY) == []


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("startup")
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    origin = labels.index_to_physical(np.array([0.0, 0.0, 45.0]))
    one = Volume(labels.array[45:46].copy(), labels.spacing, tuple(origin), labels.direction, dict(labels.metadata))
    write_volume(one, folder / "labels.nii.gz")
    return {"labels": folder / "labels.nii.gz", "model": make_tiny_model(folder / "tiny"), "folder": folder}


def _generate_in_fresh_process(files: dict[str, Path], out: Path, env: dict[str, str] | None = None) -> dict:
    argv = ["generate", "--labels", str(files["labels"]), "--out", str(out), "--model", str(files["model"]),
            "--steps", "2", "--seed", "4", "--progress", "none"]
    return _fresh(f"from napari_medgen.cli import main\nassert main({argv!r}) == 0", env=env)


def test_generate_imports_monai_leanly_with_the_same_result_as_a_full_import(slice_files):
    lean_out, full_out = slice_files["folder"] / "lean.nii.gz", slice_files["folder"] / "full.nii.gz"
    lean = _generate_in_fresh_process(slice_files, lean_out)
    full = _generate_in_fresh_process(slice_files, full_out, env={MONAI_IMPORT_ENV: "full"})
    assert lean["monai_kind"] == "_PartialMonai" and _imported(lean, MONAI_EXTRAS) == []
    # A full import takes whichever of the optional libraries are installed (nibabel, sklearn may not be).
    installed = {name for name in MONAI_EXTRAS if importlib.util.find_spec(name.split(".")[0]) is not None}
    assert full["monai_kind"] == "module" and set(_imported(full, MONAI_EXTRAS)) == installed
    np.testing.assert_array_equal(read_volume(lean_out).array, read_volume(full_out).array)


def test_a_lean_import_that_fails_falls_back_to_monais_own(slice_files):
    """A MONAI whose sub-packages import otherwise (here: monai.config refused during the lean import) is
    imported the full way, and nothing of the failed attempt stays behind."""
    report = _fresh(
        "from napari_medgen.engine.model import networks\n"
        "from napari_medgen.engine.model.card import load_card\n"
        "networks._NOT_FOR_NETWORKS += ('monai.config',)\n"
        "networks.use_lean_monai_import()\n"
        f"built = networks.build_networks(load_card({str(slice_files['model'])!r}))\n"
        "assert type(built['network']).__name__ == 'DiffusionModelUNet'\n"
        "import monai.config, monai.transforms"
    )
    assert report["monai_kind"] == "module"


_PLACEHOLDERS = """
import json, sys
from napari_medgen.engine.model import networks
{setup}
networks.monai_module("monai.networks.nets"); networks.monai_module("monai.networks.schedulers")
networks.monai_module("monai.inferers")
found = {{name: sorted(attr for attr, value in list(vars(module).items()) if type(value).__name__ == "_LazyRaise")
         for name, module in list(sys.modules.items())
         if module is not None and name.startswith(("monai.networks", "monai.inferers"))}}
print("PLACEHOLDERS" + json.dumps(found), file=sys.stderr)
"""


def test_the_lean_import_leaves_monais_network_modules_as_a_full_import_does():
    """Where MONAI could not import an optional dependency it binds a placeholder that raises when used: the
    modules a run uses (monai.networks, monai.inferers) must hold the same placeholders whichever the import.
    The one difference is DiNTS's scipy.sparse, and DiNTS is no network a card may name."""
    from napari_medgen.engine.model.card_sections import ALLOWED_CONTROLNETS, ALLOWED_NETWORKS

    found = {}
    for mode in ("lean", "full"):
        code = _PLACEHOLDERS.format(setup=f"networks.use_lean_monai_import({mode == 'lean'})")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             env={k: v for k, v in os.environ.items() if k != MONAI_IMPORT_ENV})
        assert run.returncode == 0, run.stderr[-3000:]
        line = [line for line in run.stderr.splitlines() if line.startswith("PLACEHOLDERS")][-1]
        found[mode] = json.loads(line[len("PLACEHOLDERS"):])
    assert "DiNTS" not in ALLOWED_NETWORKS + ALLOWED_CONTROLNETS
    both = (set(found["lean"]) & set(found["full"])) - {"monai.networks.nets.dints"}
    assert {n: found["lean"][n] for n in both} == {n: found["full"][n] for n in both}
    assert set(found["lean"]) <= set(found["full"])  # the full import loads every module; lean only what nets need
