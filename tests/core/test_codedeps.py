"""lawshift/core/codedeps.py: the modules a file imports (at any depth of the file), the package `__init__`s they
run, and the package data beside them. The import graph's circles and layers: tests/test_layers.py."""

from __future__ import annotations

from lawshift.core.codedeps import PACKAGE, code_files, imported_modules, packages_of


def test_a_function_level_import_counts(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from lawshift.engines.vllm_backend import VLLMBackend\n", encoding="utf-8")
    assert imported_modules(module) == {PACKAGE / "engines" / "vllm_backend.py"}


def test_importing_names_from_a_subpackage_finds_its_modules_and_its_init(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from lawshift.core import files, paths\n", encoding="utf-8")
    assert imported_modules(module) == {PACKAGE / "core" / "__init__.py", PACKAGE / "core" / "files.py",
                                        PACKAGE / "core" / "paths.py"}


def test_packages_of_a_module_are_its_subpackage_and_lawshift():
    assert packages_of(PACKAGE / "task" / "data.py") == {PACKAGE / "task" / "__init__.py", PACKAGE / "__init__.py"}


def test_a_stage_reaches_the_inits_and_the_data_beside_a_module():
    files = code_files("filter")
    assert {"lawshift/__init__.py", "lawshift/sample/__init__.py", "lawshift/sample/filtering.py",
            "lawshift/task/__init__.py", "lawshift/task/labels.json", "stages/filter.py"} <= set(files)
    assert not any(f.startswith("lawshift/experiments/") for f in files)
