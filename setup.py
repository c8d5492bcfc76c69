"""Ship the Julia package inside the wheel.

Everything about the project is in pyproject.toml; this file only extends ``build_py``
so that ``julia/PySciMLGrad`` (the Julia half, outside the Python package in the
checkout) lands at ``pysciml_grad/backends/julia/PySciMLGrad`` in the build, where
``runtime.package_path()`` looks first. Without it a non-editable install has no Julia
package to ``Pkg.develop`` (issue 9 bug 3). The sdist carries it through MANIFEST.in.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
JULIA_PACKAGE = HERE / "julia" / "PySciMLGrad"
TARGET = Path("pysciml_grad") / "backends" / "julia" / "PySciMLGrad"
#: What a Julia package needs to be developed and tested; never a Manifest (it pins a
#: machine's resolve) or editor/CI debris.
SHIPPED = ("Project.toml", "UPSTREAM.md", "src", "ext", "test")


class BuildPyWithJulia(build_py):
    def run(self):
        super().run()
        if not (JULIA_PACKAGE / "Project.toml").is_file():
            raise FileNotFoundError(f"{JULIA_PACKAGE} is missing: the wheel would ship without the Julia package")
        dest = Path(self.build_lib) / TARGET
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in SHIPPED:
            src = JULIA_PACKAGE / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("Manifest*.toml", "*.jl.*.cov"))
            elif src.is_file():
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": BuildPyWithJulia})
