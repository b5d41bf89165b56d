"""The layout's rules: dependencies point one way, nothing imports control_loop, heavy libraries load when used."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["kit", "twin", "stimulus_synthesis", "acquisition", "hardware", "simulation", "control_loop"]
# What each package may import from the others (kit, the shared leaf, imports none of them).
ALLOWED = {
    "kit": set(),
    "twin": {"kit"},
    "acquisition": {"kit"},
    "stimulus_synthesis": {"kit", "twin"},
    # what a real lab runs: no simulation, no twin; the presenter enforces the safety limits again
    "hardware": {"kit", "stimulus_synthesis"},
    # simulated rigs serve over the bridge; the subjects read twin's feature models, the rigs acquisition's HRF
    "simulation": {"kit", "hardware", "acquisition", "twin"},
    "control_loop": {"kit", "twin", "stimulus_synthesis", "acquisition", "hardware", "simulation"},
}
# The one module of another package that hardware may use (numpy only: the presenter computer stays light).
HARDWARE_MAY_USE = {"stimulus_synthesis.safety"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_point_one_way():
    for package in PACKAGES:
        folder = ROOT / package
        if not folder.exists():
            continue
        for path in folder.rglob("*.py"):
            used = _imports(path) & set(PACKAGES) - {package}
            assert used <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(used - ALLOWED[package])}"


def _modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_hardware_uses_only_the_safety_checks_of_other_packages():
    for path in (ROOT / "hardware").rglob("*.py"):
        used = {m for m in _modules(path) if m.split(".")[0] in set(PACKAGES) - {"hardware", "kit"}}
        assert used <= HARDWARE_MAY_USE, f"{path.relative_to(ROOT)} imports {sorted(used - HARDWARE_MAY_USE)}"


def test_only_the_control_loop_orchestrates():
    """Only control_loop drives a session: talks to peers as the controller (PeerClient) and writes session
    files (SessionFile); the other packages each do their one job."""
    for package in PACKAGES:
        if package in ("control_loop", "acquisition", "hardware"):  # (the classes' own packages define them)
            continue
        for path in (ROOT / package).rglob("*.py"):
            names = {a.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
                     for a in node.names}  # fmt: skip
            used = names & {"PeerClient", "SessionFile"}
            assert not used, f"{path.relative_to(ROOT)} imports {sorted(used)}: only control_loop orchestrates"


def test_reporting_imports_no_simulation(tmp_path):
    """A report (and a dry run's summary) is made from the session file alone: even of a simulated session, it
    loads nothing of simulation (true responses are in the file), nor hardware or the twin's feature models."""
    for name in ("report.py", "dryrun.py"):
        used = _imports(ROOT / "control_loop" / name)
        assert not used & {"simulation", "hardware"}, f"control_loop/{name} imports {sorted(used)}"
    from acquisition import SessionFile

    path = tmp_path / "s.h5"
    from control_loop.protocol import load_protocol

    p = load_protocol(ROOT / "tests" / "protocols" / "tiny_language.toml")
    with SessionFile.create(path, ["lang", "md"], protocol=p.model_dump_json(), simulated=True) as f:
        f.add_stimulus(1, text="A sentence.", condition="B")
        f.add_truth(0, 1, [1.0, 0.5], run=1)
    code = (
        "import sys; from control_loop.report import write_report; "
        f"write_report({str(path)!r}); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('simulation', 'hardware', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"reporting loads {out.stdout.strip()}"


def test_the_command_line_starts_without_the_heavy_libraries():
    """`neurotwin --help` and argument errors must not wait for torch, scipy or pandas."""
    code = (
        "import sys; from click.testing import CliRunner; from control_loop.cli import cli; "
        "result = CliRunner().invoke(cli, ['--help']); assert result.exit_code == 0, result.output; "
        "print(' '.join(sorted({'torch', 'scipy', 'pandas', 'transformers', 'zmq'} & set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"importing the command line loads {out.stdout.strip()}"


def test_a_twin_predicts_from_cached_features_without_torch(tmp_path, small_csv, feature_cache):
    """Loading a twin file and predicting sentences already in the feature cache needs no torch or transformers
    (`twin predict` on a warm cache, sessions re-scoring their pool, every CLI error about a twin file)."""
    from twin import FeaturePlan, TextFeatures, Twin, load_dataset

    data = load_dataset(small_csv)
    plan = FeaturePlan(model="minilm", layers=(3,))
    Twin.fit(data.sentences, data.responses, data.targets, features=TextFeatures(plan, cache=feature_cache)).save(
        tmp_path / "twin.h5"
    )
    code = (
        "import sys; from twin import TextFeatures, Twin; "
        f"twin = Twin.load({str(tmp_path / 'twin.h5')!r}); "
        f"twin.attach(TextFeatures(twin.plan, cache={str(feature_cache)!r})); "
        f"print(twin.predict({data.sentences[:5]!r})[0].shape); "
        "print(' '.join(sorted({'torch', 'transformers'} & set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    shape, loaded = [*out.stdout.splitlines(), ""][:2]
    assert shape == "(5, 2)" and loaded == "", f"predicting from the cache loads {loaded}"


def test_no_module_imports_a_module_that_imports_it():
    """No import cycles between the twin's modules (the model imports the projection, never the reverse)."""
    graph = {}
    for path in (ROOT / "twin").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
        graph[path.stem] = found
    cycles = sorted((a, b) for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, set()))
    assert not cycles, f"modules importing each other: {cycles}"
