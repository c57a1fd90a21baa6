"""The 3D Slicer module's Slicer-free logic (slicer/MedGen/MedGenLib), run for real against the command line.

MedGenLib is not part of the napari_medgen package: it is loaded here from its file path, as Slicer
loads it from the module folder. Runs use a tiny random-weight model and a 3 x 16 x 16 label map; each
real run pays the command line's start-up (torch and MONAI imports), so there are few of them. No
Slicer binary exists here: MedGen.py itself is only parsed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import slicer_fixtures
from tiny_models import make_tiny_model

from napari_medgen.engine.io import write_volume
from napari_medgen.engine.model.labels import TISSUE_SCHEMA
from napari_medgen.engine.volume import Volume

SLICER_DIR = Path(__file__).resolve().parents[1] / "slicer"
MODULE_DIR = SLICER_DIR / "MedGen"
LIB_DIR = MODULE_DIR / "MedGenLib"
POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="process groups and fake executables are POSIX here")
RUN_TIMEOUT_S = 180  # a cold process on a loaded 2-core machine takes 10-20 s


def _load_lib():
    """MedGenLib from its folder, as a package (its modules import each other relatively)."""
    if "MedGenLib" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "MedGenLib", LIB_DIR / "__init__.py", submodule_search_locations=[str(LIB_DIR)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["MedGenLib"] = package
        spec.loader.exec_module(package)
    return (importlib.import_module("MedGenLib.cli_runner"), importlib.import_module("MedGenLib.serve_client"),
            importlib.import_module("MedGenLib.models"), importlib.import_module("MedGenLib.label_names"))


cli_runner, serve_client, models, label_names = _load_lib()
results = importlib.import_module("MedGenLib.results")
executable = slicer_fixtures.executable  # the fixture, by name


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, a 3-slice label map, a scan and an inpainting region, as a front end would write them."""
    folder = tmp_path_factory.mktemp("slicer-run")
    labels = np.zeros((3, 16, 16), np.uint8)
    labels[:, 3:13, 3:13] = 1
    labels[:, 5:11, 5:11] = 2
    labels[:, 7:9, 7:9] = 3
    geometry = {"spacing": (4.0, 4.0, 4.0), "origin": (-30.0, 10.0, 5.0), "direction": tuple(np.eye(3).ravel())}
    paths = {"labels": folder / "labels.nrrd", "image": folder / "scan.nrrd", "region": folder / "region.nrrd"}
    write_volume(Volume(labels, **geometry), paths["labels"])
    write_volume(Volume(labels.astype(np.float32) * 300.0 + 50.0, **geometry), paths["image"])
    write_volume(Volume((labels == 2).astype(np.uint8), **geometry), paths["region"])
    paths["model"] = make_tiny_model(folder / "tiny-2d")
    paths["folder"] = folder
    return paths


def _fake_executable(folder: Path, name: str, body: str) -> str:
    """A stand-in for napari-medgen: a Python script with this interpreter in its #! line."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _outputs(folder: Path, stem: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(stem))


# -- command lines ------------------------------------------------------------------------------


def test_generate_and_inpaint_command_lines_have_the_right_arguments(tmp_path, monkeypatch):
    labels, out = tmp_path / "labels.nrrd", tmp_path / "out.nrrd"
    args = cli_runner.generate_arguments(str(labels), str(out), model="brain-t1-demo", steps=20, seed=7,
                                         guidance=1.5, variants=2, device="cpu")
    assert cli_runner.command_line("/env/bin/napari-medgen", "generate", args) == [
        "/env/bin/napari-medgen", "generate", "--labels", str(labels), "--out", str(out), "--model", "brain-t1-demo",
        "--steps", "20", "--seed", "7", "--guidance", "1.5", "--variants", "2", "--device", "cpu",
        "--progress", "jsonl"]

    # Defaults are left to the command line (guidance None: the model card's); relative paths made absolute,
    # a model folder too, a registered model's name is kept.
    monkeypatch.chdir(tmp_path)
    args = cli_runner.inpaint_arguments("scan.nrrd", "region.nrrd", "out.nrrd", model=str(Path("models") / "mine"),
                                        steps=10, guidance=None, context_mm=8.0)
    assert cli_runner.command_line("napari-medgen", "inpaint", args) == [
        "napari-medgen", "inpaint", "--image", str(tmp_path / "scan.nrrd"), "--region", str(tmp_path / "region.nrrd"),
        "--out", str(tmp_path / "out.nrrd"), "--model", str(tmp_path / "models" / "mine"), "--steps", "10",
        "--context-mm", "8.0", "--progress", "jsonl"]
    with_labels = cli_runner.inpaint_arguments("s.nrrd", "r.nrrd", "o.nrrd", labels="l.nrrd")
    assert list(with_labels) == ["image", "region", "labels", "out"]

    with pytest.raises(cli_runner.MedGenRunError, match="needs out"):
        cli_runner.run_arguments("generate", labels="l.nrrd")
    with pytest.raises(cli_runner.MedGenRunError, match="needs region"):
        cli_runner.run_arguments("inpaint", image="s.nrrd", out="o.nrrd")
    with pytest.raises(cli_runner.MedGenRunError, match="set by the runner"):
        cli_runner.generate_arguments("l.nrrd", "o.nrrd", progress="bar")
    with pytest.raises(cli_runner.MedGenRunError, match="unknown command"):
        cli_runner.run_arguments("train", out="o")


def test_environment_drops_the_host_programs_python_settings():
    env = cli_runner.clean_environment({"PYTHONHOME": "/slicer/python", "PYTHONPATH": "/slicer/lib", "PATH": "/bin"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env
    assert env["PATH"] == "/bin" and env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUNBUFFERED"] == "1"


@POSIX_ONLY
def test_executable_setting_is_checked_in_words(tmp_path):
    assert "not set" in cli_runner.executable_problem("")
    assert "does not exist" in cli_runner.executable_problem(str(tmp_path / "nope"))
    assert "is a folder" in cli_runner.executable_problem(str(tmp_path))
    plain = tmp_path / "napari-medgen"
    plain.write_text("")
    assert "not executable" in cli_runner.executable_problem(str(plain))
    with pytest.raises(cli_runner.MedGenRunError, match="not executable"):
        cli_runner.start_run(str(plain), "generate", {"labels": "l", "out": "o"})
    plain.chmod(0o755)
    assert cli_runner.executable_problem(str(plain)) is None


# -- real runs of the command line --------------------------------------------------------------


def test_generate_progress_events_arrive_in_order_then_the_result(executable, files, tmp_path):
    out = tmp_path / "synthetic.nrrd"
    args = cli_runner.generate_arguments(str(files["labels"]), str(out), model=str(files["model"]), steps=4, seed=3)
    run = cli_runner.start_run(executable, "generate", args)
    events: list[dict] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not events or events[-1]["event"] not in cli_runner.TERMINAL_EVENTS:
        events += run.poll()  # as Slicer's timer calls it: never blocks
        assert time.monotonic() < deadline, f"no result after {RUN_TIMEOUT_S} s: {events}"
        time.sleep(0.05)

    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    assert {e["total"] for e in progress} == {4}
    assert all(e["protocol"] == cli_runner.SUPPORTED_PROTOCOL for e in events)
    assert events[-1]["event"] == "result" and [e["event"] for e in events].count("result") == 1
    assert events[-1]["paths"] == [str(out)] == run.paths
    assert run.done and run.state == "succeeded" and run.error is None and (run.step, run.total) == (4, 4)
    assert out.exists()
    assert run.poll() == []  # nothing after the terminal event
    assert run.process.poll() is not None  # the terminal event comes once the process has gone


@POSIX_ONLY
def test_cancel_stops_within_a_second_and_writes_nothing(executable, files, tmp_path):
    out = tmp_path / "cancelled.nrrd"
    args = cli_runner.generate_arguments(str(files["labels"]), str(out), model=str(files["model"]), steps=100,
                                         variants=3)
    run = cli_runner.start_run(executable, "generate", args, grace_s=0.8)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(e["event"] == "progress" for e in run.poll()):  # cancel once it is sampling
        assert not run.done and time.monotonic() < deadline, run.poll()
        time.sleep(0.02)

    asked = time.monotonic()
    run.cancel()
    assert run.wait(1.0), "the run was still going a second after cancel"
    assert time.monotonic() - asked < 1.0
    events = run.poll()
    assert events[-1]["event"] == "cancelled" and run.state == "cancelled"
    assert [e["event"] for e in events].count("cancelled") == 1
    assert _group_gone(run.pid)
    assert _outputs(tmp_path, "cancelled") == []


def test_a_command_line_error_becomes_one_message(executable, files, tmp_path):
    missing = tmp_path / "no_such_labels.nrrd"
    args = cli_runner.generate_arguments(str(missing), str(tmp_path / "out.nrrd"), model=str(files["model"]), steps=2)
    run = cli_runner.start_run(executable, "generate", args)
    events = cli_runner.run_to_end(run, RUN_TIMEOUT_S)
    assert [e["event"] for e in events] == ["error"]
    assert run.state == "failed" and run.error == events[0]["message"]
    assert str(missing) in run.error and "Traceback" not in run.error and "\n" not in run.error
    assert run.exit_code in (1, -9)  # its own exit, or killed during its teardown after the error line
    assert not (tmp_path / "out.nrrd").exists()


def test_an_option_the_command_line_does_not_know_is_reported_as_refused(executable, tmp_path):
    """A module newer than its napari-medgen: argparse exits 2 with usage on stderr and no event."""
    args = cli_runner.generate_arguments("l.nrrd", str(tmp_path / "o.nrrd"), no_such_option=1)
    run = cli_runner.start_run(executable, "generate", args)
    events = cli_runner.run_to_end(run, 60)
    assert [e["event"] for e in events] == ["error"] and run.exit_code == 2
    assert "refused the command line" in run.error and "--no-such-option" in run.error


# -- processes that break the protocol ----------------------------------------------------------


@POSIX_ONLY
def test_a_crashed_process_is_reported_with_its_exit_code_and_stderr(tmp_path):
    fake = _fake_executable(tmp_path, "napari-medgen", """\
        import json, sys
        print(json.dumps({"event": "progress", "protocol": 1, "step": 1, "total": 10, "message": ""}), flush=True)
        print("a stray print from a library", flush=True)
        print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True)
        sys.exit(3)
        """)
    run = cli_runner.start_run(fake, "generate", cli_runner.generate_arguments("l.nrrd", str(tmp_path / "o.nrrd")))
    events = cli_runner.run_to_end(run, 60)
    assert [e["event"] for e in events] == ["progress", "error"]
    assert run.state == "failed" and run.exit_code == 3 and events[-1]["exit_code"] == 3
    assert "exit code 3" in run.error and "Segmentation fault" in run.error
    assert run.other_output == ["a stray print from a library"]


@POSIX_ONLY
def test_a_newer_protocol_is_refused_in_words(tmp_path):
    fake = _fake_executable(tmp_path, "napari-medgen", """\
        import json, time
        print(json.dumps({"event": "progress", "protocol": 2, "step": 1, "total": 10}), flush=True)
        time.sleep(60)
        """)
    run = cli_runner.start_run(fake, "generate", cli_runner.generate_arguments("l.nrrd", "o.nrrd"))
    events = cli_runner.run_to_end(run, 30)
    assert [e["event"] for e in events] == ["error"]
    assert "protocol version 2" in run.error and "update" in run.error
    assert _group_gone(run.pid)


@POSIX_ONLY
def test_a_cancelled_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    fake = _fake_executable(tmp_path, "napari-medgen", """\
        import json, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"event": "progress", "protocol": 1, "step": 1, "total": 10}), flush=True)
        time.sleep(60)
        """)
    run = cli_runner.start_run(fake, "generate", cli_runner.generate_arguments("l.nrrd", "o.nrrd"), grace_s=0.3)
    deadline = time.monotonic() + 30
    while run.step == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.cancel()
    assert run.wait(5)
    assert run.poll()[-1]["event"] == "cancelled" and run.exit_code == -9
    assert _group_gone(run.pid)


# -- models and label names ---------------------------------------------------------------------


def test_models_lists_the_tiny_model_with_its_classes(executable, files, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(files["model"].parent))
    found = {m.name: m for m in models.list_models(executable)}
    tiny = found["tiny-2d"]
    assert Path(tiny.folder) == files["model"] and tiny.source == "environment"
    assert tiny.tasks == ("generate", "inpaint") and tiny.supports("inpaint")
    assert tiny.classes == [(c.index, c.name) for c in TISSUE_SCHEMA.classes]


def test_models_table_is_cut_at_its_header_columns(tmp_path):
    folder = tmp_path / "my models" / "ct liver"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({
        "modality": "CT", "conditioning": {"default_guidance": 1.5},
        "label_schema": {"classes": [{"index": 2, "name": "tumor"}, {"index": 0, "name": "background"},
                                     {"index": 1, "name": "liver"}]}}))
    text = (
        "NAME      VERSION  DIMS  TASKS     CONDITIONING  SOURCE  FOLDER\n"
        f"ct-liver  2.0      3-D   generate  label map     user    {folder}\n"
        "note: ct-liver from user shadows the one in /elsewhere\n")
    [model] = [models.add_card_details(m) for m in models.parse_models_table(text)]
    assert (model.name, model.version, model.dims, model.tasks, model.folder) == (
        "ct-liver", "2.0", "3-D", ("generate",), str(folder))
    assert model.classes == [(0, "background"), (1, "liver"), (2, "tumor")]
    assert model.default_guidance == 1.5 and model.modality == "CT" and not model.supports("inpaint")
    assert models.parse_models_table("no models found; searched: shipped: /x") == []


def test_segment_names_map_onto_the_schema_by_name():
    classes = [(0, "background"), (1, "CSF"), (2, "grey matter"), (3, "white matter"), (4, "tumour")]
    matched, unmatched = label_names.match_segments(
        ["csf", "Gray_Matter", "White-matter ", "Tumor", "Segment_1"], classes)
    assert matched == {"csf": 1, "Gray_Matter": 2, "White-matter ": 3, "Tumor": 4}
    assert unmatched == ["Segment_1"]
    assignment = {**matched, "Segment_1": label_names.IGNORE}
    assert [index for _, index in label_names.paint_order(assignment)] == [1, 2, 3, 4]
    assert label_names.mapping_problem(assignment, classes) is None
    assert "no segment" in label_names.mapping_problem({"Segment_1": label_names.IGNORE}, classes)
    names = list(assignment)  # every segment must be in the mapping, every one mapped must exist, with a class
    assert label_names.default_assignment(names, classes) == assignment
    assert "'Segment_1' has no class" in label_names.mapping_problem(matched, classes, names)
    assert "'Segment_1' is assigned label 9" in label_names.mapping_problem({**matched, "Segment_1": 9}, classes, names)
    assert "no segment 'gone'" in label_names.mapping_problem({**assignment, "gone": 1}, classes, names)


def test_results_are_named_and_marked_synthetic_with_their_seeds(tmp_path):
    model = models.ModelInfo(name="brain-t1-demo", folder="/models/brain")
    options = {"model": model, "steps": 20, "seed": 5, "guidance": 1.5, "region": "lesion"}
    paths = ["/run/result_seed7.nrrd", "/run/result.nrrd"]  # a seed in the file name wins; else seed + k
    inpainted = results.describe_results("inpaint", options, paths, "T1", "vtkMRMLScalarVolumeNode1")
    assert [(r.seed, r.name) for r in inpainted] == [
        (7, "T1 inpainted lesion (synthetic, seed 7)"), (6, "T1 inpainted lesion (synthetic, seed 6)")]
    assert inpainted[0].attributes == {
        "MedGen.Synthetic": "true", "MedGen.Command": "inpaint", "MedGen.Model": "brain-t1-demo", "MedGen.Seed": "7",
        "MedGen.Steps": "20", "MedGen.Guidance": "1.5", "MedGen.Source": "vtkMRMLScalarVolumeNode1"}
    [generated] = results.describe_results("generate", {"model": None}, ["/run/r.nrrd"], "CT", "id")
    assert generated.name == "CT generated (synthetic, seed 0)" and generated.attributes["MedGen.Model"] == ""
    assert models.model_classes(None) == [] and results.result_seed("x_seed-3.nrrd", 9, 2) == -3
    (tmp_path / "r.json").write_text(json.dumps({"synthetic": True, "provenance": {"steps": 4, "inputs": {"a": "1"}}}))
    [described] = results.describe_results("generate", {"model": None}, [str(tmp_path / "r.nii.gz")], "CT", "id")
    assert described.attributes["MedGen.Provenance.steps"] == "4"  # the sidecar's provenance, kept on the node
    assert described.attributes["MedGen.Provenance.inputs"] == '{"a": "1"}'


# -- the serve worker ---------------------------------------------------------------------------


@POSIX_ONLY
def test_serve_worker_runs_inpaints_cancels_and_shuts_down(executable, files, tmp_path):
    worker = serve_client.ServeWorker(executable, cwd=str(tmp_path))
    try:
        first = worker.submit("inpaint", cli_runner.inpaint_arguments(
            str(files["image"]), str(files["region"]), str(tmp_path / "inpainted.nrrd"), labels=str(files["labels"]),
            model=str(files["model"]), steps=3))
        second = worker.submit("generate", cli_runner.generate_arguments(
            str(files["labels"]), str(tmp_path / "long.nrrd"), model=str(files["model"]), steps=100, variants=3))
        events = cli_runner.run_to_end(first, RUN_TIMEOUT_S)
        assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
        assert events[-1]["event"] == "result" and first.paths == [str(tmp_path / "inpainted.nrrd")]
        assert all(e["id"] == first.request_id for e in events)
        assert worker.ready.is_set() and worker.version

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while second.step == 0:
            assert time.monotonic() < deadline and not second.done
            time.sleep(0.02)
        second.cancel()
        assert second.wait(5) and second.state == "cancelled"
        assert _outputs(tmp_path, "long") == []
        assert worker.alive  # one request's cancel leaves the worker running
    finally:
        worker.shutdown(timeout=15)
    assert not worker.alive and worker.exit_code == 0 and _group_gone(worker.pid)


@POSIX_ONLY
def test_a_dying_worker_fails_its_unfinished_requests(tmp_path):
    fake = _fake_executable(tmp_path, "napari-medgen", """\
        import json, sys
        print(json.dumps({"event": "ready", "protocol": 1, "version": "0", "pid": 0, "commands": []}), flush=True)
        request = json.loads(sys.stdin.readline())
        print(json.dumps({"event": "started", "protocol": 1, "id": request["id"], "command": "generate"}), flush=True)
        print("CUDA error: an illegal memory access", file=sys.stderr, flush=True)
        sys.exit(5)
        """)
    worker = serve_client.ServeWorker(fake)
    run = worker.submit("generate", cli_runner.generate_arguments("l.nrrd", "o.nrrd"))
    events = cli_runner.run_to_end(run, 30)
    assert [e["event"] for e in events] == ["started", "error"]
    assert "exit code 5" in run.error and "illegal memory access" in run.error
    assert worker.wait(5) and not worker.alive
    with pytest.raises(cli_runner.MedGenRunError, match="not running"):
        worker.submit("generate", cli_runner.generate_arguments("l.nrrd", "o.nrrd"))


# -- the Slicer module's files ------------------------------------------------------------------


def _classes_of(path: Path) -> dict[str, list[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    return {node.name: [ast.unparse(base) for base in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}


def test_medgen_module_defines_the_four_scripted_module_classes():
    classes = _classes_of(MODULE_DIR / "MedGen.py")
    assert classes["MedGen"] == ["ScriptedLoadableModule"]
    assert classes["MedGenWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["MedGenLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["MedGenTest"] == ["ScriptedLoadableModuleTest"]


def test_the_plain_modules_run_on_slicers_python_and_import_nothing_of_slicer():
    for path in SLICER_DIR.rglob("*.py"):  # MedGen.py and MedGenSlicerLib run in Slicer's Python too
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    plain = ", ".join(f"MedGenLib.{path.stem}" for path in sorted(LIB_DIR.glob("*.py")) if path.stem != "__init__")
    probe = (
        f"import sys; sys.path.insert(0, sys.argv[1]); import {plain}; "
        "print(sorted(m for m in ('slicer', 'qt', 'vtk', 'ctk', 'numpy', 'torch', 'napari_medgen') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, str(MODULE_DIR)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_extension_is_laid_out_as_the_extension_wizard_makes_it():
    top = (SLICER_DIR / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_DEPENDS"):
        assert f"set({field} " in top
    assert "project(MedGen)" in top and "add_subdirectory(MedGen)" in top and "find_package(Slicer REQUIRED)" in top
    module = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in module
    listed = module.split("set(MODULE_PYTHON_SCRIPTS", 1)[1].split("slicerMacroBuildScriptedModule", 1)[0]
    items = {line.strip().replace("${MODULE_NAME}", "MedGen") for line in listed.splitlines()}
    items = {item for item in items if item and not item.startswith(("set(", ")", "#"))}
    for item in items:
        assert (MODULE_DIR / item).is_file(), f"{item} is listed in MedGen/CMakeLists.txt but missing"
    for path in MODULE_DIR.rglob("*.py"):  # a file left out would be missing from the built extension
        assert path.relative_to(MODULE_DIR).as_posix() in items, f"{path.name} is not in MODULE_PYTHON_SCRIPTS"
    icon = (MODULE_DIR / "Resources" / "Icons" / "MedGen.png").read_bytes()
    assert icon[:8] == b"\x89PNG\r\n\x1a\n" and len(icon) < 20_000
    assert (SLICER_DIR / "README.md").is_file()
