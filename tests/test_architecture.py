"""The layout's rules: dependencies point one way, nothing imports control_loop, heavy libraries load when used."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["kit", "twin", "stimulus_synthesis", "acquisition", "hardware", "control_loop"]
# What each package may import from the others (kit, the shared leaf, imports none of them).
ALLOWED = {
    "kit": set(),
    "twin": {"kit"},
    # the simulated subjects' features, the HRF, and the safety checker the presenter enforces again
    "hardware": {"kit", "twin", "acquisition", "stimulus_synthesis"},
    "acquisition": {"kit"},
    "stimulus_synthesis": {"kit", "twin"},
    "control_loop": {"kit", "twin", "stimulus_synthesis", "acquisition", "hardware"},
}


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
