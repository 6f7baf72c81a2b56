"""The package's imports point one way: each module imports only from its own layer or lower ones.

The layers are :data:`LAYERS`, lowest first (the README's Layout section states the same order).
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "anchor_reg"

# Lowest first. A name covers the module and, for a package, every module in it.
LAYERS = [
    ("foundation", ["anchor_reg", "anchor_reg.errors", "anchor_reg.atomic", "anchor_reg.digest", "anchor_reg.random_state",
                    "anchor_reg.lock", "anchor_reg.model_folder"]),
    ("data", ["anchor_reg.data", "anchor_reg.corruption"]),
    ("model pieces", ["anchor_reg.embedding", "anchor_reg.losses", "anchor_reg.anchors", "anchor_reg.heads",
                      "anchor_reg.metrics", "anchor_reg.checkpointer", "anchor_reg.epoch_counter",
                      "anchor_reg.forgetting", "anchor_reg.retrieval", "anchor_reg.replay"]),
    ("brains", ["anchor_reg.brains"]),
    ("configuration", ["anchor_reg.checks", "anchor_reg.config", "anchor_reg.provenance"]),
    ("verification and publishing", ["anchor_reg.results", "anchor_reg.plots", "anchor_reg.compare",
                                     "anchor_reg.model_card", "anchor_reg.hub", "anchor_reg.export",
                                     "anchor_reg.evaluate", "anchor_reg.report", "anchor_reg.wise"]),
    ("base models, stages and pipeline", ["anchor_reg.base", "anchor_reg.stage_data", "anchor_reg.pipeline"]),
    ("command lines", ["anchor_reg.benchmark"]),
]


def module_name(path):
    """``anchor_reg/data/audio.py`` -> ``anchor_reg.data.audio`` (a package's ``__init__`` -> the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module):
    """(index, name) of the layer whose most specific entry covers ``module``; None if none does."""
    covering = [(len(entry), k, name) for k, (name, entries) in enumerate(LAYERS) for entry in entries
                if module == entry or module.startswith(entry + ".") and entry != "anchor_reg"]
    if not covering and module == "anchor_reg":
        return 0, LAYERS[0][0]
    return max(covering)[1:] if covering else None


def imported_modules(path):
    """The anchor_reg modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "anchor_reg")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "anchor_reg":
            for alias in node.names:  # `from anchor_reg import compare` imports a module, `recipe_hparams` a name
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


IMPORTS = {module: imported_modules(path) - {module} for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert [module for module in MODULES if layer_of(module) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module):
    own, own_name = layer_of(module)
    higher = {imported: layer_of(imported)[1] for imported in IMPORTS[module] if layer_of(imported)[0] > own}
    assert not higher, f"{module} ({own_name}) imports from higher layers: {higher}"


def test_no_import_cycles():
    """No module reaches itself through imports (a cycle hidden in a function-level import included)."""
    cycles = []

    def visit(module, path):
        for imported in sorted(IMPORTS[module] & set(MODULES)):
            if imported == path[0]:
                cycles.append(" -> ".join([*path, imported]))
            elif imported not in path and imported > path[0]:  # each cycle once, from its smallest module
                visit(imported, [*path, imported])

    for module in sorted(MODULES):
        visit(module, [module])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The parser finds imports at module level and inside functions, in both import forms."""
    source = tmp_path / "probe.py"
    source.write_text("import anchor_reg.brains\n\ndef f():\n    from anchor_reg import export, recipe_hparams\n")
    assert imported_modules(source) == {"anchor_reg.brains", "anchor_reg.export", "anchor_reg"}
    assert layer_of("anchor_reg.anchors")[0] < layer_of("anchor_reg.brains")[0] < layer_of("anchor_reg.export")[0]
