"""The package layout's promise: knowledge distillation proper loads without scikit-learn or Hugging Face."""

import subprocess
import sys


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in ('sklearn', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_distill_imports_neither_scikit_learn_nor_transformers():
    assert _loaded_after("import modelpress.distill, modelpress.distill.losses, modelpress.distill.feature_losses") == set()


def test_tabular_loads_scikit_learn_only_with_its_estimators():
    assert "sklearn" not in _loaded_after("import modelpress.tabular")
    assert "sklearn" in _loaded_after("from modelpress.tabular import MimicMLPClassifier")
    assert "sklearn" in _loaded_after("import modelpress.tabular.trees")


def test_old_module_paths_are_gone():
    for old in ("modelpress.trees", "modelpress.distill.mimic", "modelpress.distill.transformer"):
        result = subprocess.run([sys.executable, "-c", f"import {old}"], capture_output=True, text=True)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, old
