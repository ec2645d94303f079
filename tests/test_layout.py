"""The package's boundaries, tested rather than kept by convention.

- `parapolicy.policy.config` imports no torch (fresh interpreter);
- the diffusion core (`parapolicy.policy.diffusion` and each of its modules) loads no other
  `parapolicy.*` module (all of them imported into one fresh interpreter);
- the static import graph of policy/ (read with `ast`, function-level imports included) only points
  down: jobs -> control -> runtime/model/data -> diffusion, config a leaf importable by all.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

POLICY = Path(__file__).resolve().parents[1] / "policy"
PKG = "parapolicy.policy"

# Which rooms each room may import (a room is a subpackage, `config`, `envs`, or `jobs`: the top-level
# modules of policy/ (one per CLI verb, run_info) and the public surface `parapolicy.policy` itself).
# `errors` (policy/errors.py: the known-refusal types and their exit codes) is a leaf like config: it
# imports nothing of the package, and every room above the diffusion core may raise its errors.
# `atomic_write` (files written whole or not at all) is such a leaf too.
LEAVES = {"errors", "atomic_write"}
ALLOWED = {
    "diffusion": {"diffusion"},
    **{leaf: set() for leaf in LEAVES},
    "data": {"config", *LEAVES, "diffusion", "data"},
    "model": {"config", *LEAVES, "diffusion", "model", "runtime"},
    "runtime": {"config", *LEAVES, "diffusion", "model", "runtime"},
    "control": {"config", *LEAVES, "diffusion", "data", "model", "runtime", "control", "envs"},
    "jobs": {"config", *LEAVES, "diffusion", "data", "model", "runtime", "control", "envs", "jobs"},
}
# config is a leaf: the only package modules it may import are the core's torch-free name modules
# (option names shared with the core without a copy; docs/design.md, "Option names") and the errors
# leaf (its checks of a setting against a loaded policy raise `ConfigError`: one line, exit code 2).
CONFIG_MAY_IMPORT = {f"{PKG}.diffusion.options", f"{PKG}.diffusion.rules", f"{PKG}.errors"}

# Imports that break the rule today, each with the reason and the owner's TODO. Keys are
# (importing file relative to policy/, imported module).
KNOWN_EXCEPTIONS = {
    ("data/dataset.py", f"{PKG}.model.normalizer"): (
        "TODO(data): the dataset fits a MinMaxNormalizer; the normaliser is torch-only and belongs "
        "below data (or the dataset returns the statistics and model/ builds the normaliser)"
    ),
}

# Function-level imports of package modules, each with why it is not at the top of the module.
LAZY_IMPORTS = {
    ("control/rollout.py", f"{PKG}.runtime.auto_window"): (
        "the auto-window budget fit is only needed when a real-time budget is set; it measures the "
        "denoiser and caches per device"
    ),
    **{
        ("runtime/distributed.py", module): (
            "the torchrun entry point `main` builds a policy; the DistributedDenoiser itself must not "
            "load the model stack"
        )
        for module in (
            f"{PKG}.config",
            f"{PKG}.diffusion.dispatch",
            f"{PKG}.diffusion.sequential",
            f"{PKG}.model.policy",
            f"{PKG}.model.pretrained",
        )
    },
}


def _room_of_module(module: str) -> str | None:
    """The room of an imported module name, or None when it is not part of the package."""
    if module == "parapolicy.envs" or module.startswith("parapolicy.envs."):
        return "envs"
    if module == PKG:
        return "jobs"
    if not module.startswith(PKG + "."):
        return "outside" if module.startswith("parapolicy") else None
    head = module[len(PKG) + 1 :].split(".")[0]
    if head in ALLOWED or head == "config":
        return head  # includes the leaves
    return "jobs"


def _room_of_file(path: Path) -> str:
    rel = path.relative_to(POLICY)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return rel.stem if rel.stem in ("config", *LEAVES) else "jobs"


def _module_of_file(path: Path) -> str:
    rel = path.relative_to(POLICY).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PKG, *parts])


def _package_of_file(path: Path) -> str:
    module = _module_of_file(path)
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(path: Path, package: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, lazy) of every `parapolicy` import in ``path`` (a module of ``package``).

    ``lazy``: not at the top level of the module. ``from pkg import sub`` counts as importing the
    submodule ``pkg.sub`` when that is a module of policy/, else as importing ``pkg``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if _is_package_module(f"{base}.{a.name}")]
            names = subs or [base]
        else:
            continue
        lazy = id(node) not in top_level
        found += [(name, node.lineno, lazy) for name in names if name.startswith("parapolicy")]
    return found


def _is_package_module(module: str) -> bool:
    if not module.startswith(PKG + "."):
        return False
    rel = Path(*module[len(PKG) + 1 :].split("."))
    return (POLICY / rel).with_suffix(".py").is_file() or (POLICY / rel / "__init__.py").is_file()


def _policy_files() -> list[Path]:
    return sorted(POLICY.rglob("*.py"))


def test_import_graph_points_down() -> None:
    bad, seen_exceptions, seen_lazy, unlisted_lazy = [], set(), set(), []
    for path in _policy_files():
        src = _room_of_file(path)
        rel = path.relative_to(POLICY).as_posix()
        for module, line, lazy in _imports(path, _package_of_file(path)):
            dst = _room_of_module(module)
            key = (rel, module)
            if lazy and dst not in (None, "outside"):
                if key in LAZY_IMPORTS:
                    seen_lazy.add(key)
                elif src != "jobs":
                    unlisted_lazy.append(f"{rel}:{line} imports {module} inside a function")
            if dst is None:
                continue
            ok = module in CONFIG_MAY_IMPORT if src == "config" else dst in ALLOWED[src]
            if not ok:
                if key in KNOWN_EXCEPTIONS:
                    seen_exceptions.add(key)
                else:
                    bad.append(f"{rel}:{line} ({src}) imports {module} ({dst})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)
    assert not unlisted_lazy, "function-level imports without a listed reason:\n" + "\n".join(unlisted_lazy)
    stale = sorted(set(KNOWN_EXCEPTIONS) - seen_exceptions) + sorted(set(LAZY_IMPORTS) - seen_lazy)
    assert not stale, f"listed exceptions that no longer occur (remove them): {stale}"


def test_the_graph_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an upward import and a relative one are both resolved and classified."""
    fake = tmp_path / "probe.py"  # read as if it were a module of the diffusion core
    fake.write_text(
        "from parapolicy.policy.model import policy\nfrom ..config import SamplerConfig\n"
        "def f():\n    from parapolicy.policy.control import rollout\n"
    )
    found = {(m, lazy) for m, _, lazy in _imports(fake, f"{PKG}.diffusion")}
    assert (f"{PKG}.model.policy", False) in found
    assert (f"{PKG}.config", False) in found
    assert (f"{PKG}.control.rollout", True) in found
    rooms = {_room_of_module(m) for m, _ in found}
    assert {"model", "config", "control"} <= rooms and not rooms <= ALLOWED["diffusion"]


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_config_imports_no_torch() -> None:
    got = _fresh(
        "import json, sys\nimport parapolicy.policy.config as c\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'kinds': list(c.SAMPLER_KINDS),"
        " 'numpy': 'numpy' in sys.modules}))"
    )
    assert got["torch"] is False
    assert set(got["kinds"]) == {"ddpm", "ddim", "dpmsolver++"}


def _core_modules() -> list[str]:
    core = POLICY / "diffusion"
    return sorted(_module_of_file(p) for p in core.rglob("*.py"))


def test_diffusion_core_loads_nothing_else_of_the_package() -> None:
    """Every core module imported into one fresh interpreter: what any one of them loads is a subset."""
    modules = _core_modules()
    got = _fresh(
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('parapolicy'))))"
    )
    parents = {"parapolicy", PKG}  # importing any submodule imports its parent packages
    others = [m for m in got if m not in parents and not m.startswith(f"{PKG}.diffusion")]
    assert not others, f"the diffusion core loaded {others}"
    assert set(modules) <= set(got)
