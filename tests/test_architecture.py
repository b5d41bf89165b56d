"""The layout's rule: dependencies point one way, and nothing imports control_loop."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["twin", "stimulus_synthesis", "acquisition", "hardware", "control_loop"]
# What each package may import from the others.
ALLOWED = {
    "twin": set(),
    # the simulated subjects' features, the HRF, and the safety checker the presenter enforces again
    "hardware": {"twin", "acquisition", "stimulus_synthesis"},
    "acquisition": set(),
    "stimulus_synthesis": {"twin"},
    "control_loop": {"twin", "stimulus_synthesis", "acquisition", "hardware"},
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
