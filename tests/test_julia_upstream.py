"""The Julia half against the upstream facts recorded in julia/PySciMLGrad/UPSTREAM.md.

UPSTREAM.md holds every UUID, version bound and reserved name the Julia code relies on,
each read from the upstream source (registry file or repository, with the commit). These
tests compare the repo's Project.toml, juliapkg.json and .jl sources with that record,
so a value typed from memory (as the two wrong UUIDs of issue 9 were) fails here.
No Julia is needed.
"""

import json
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pysciml_grad.backends.julia import runtime

ROOT = Path(__file__).resolve().parent.parent
JL_PKG = ROOT / "julia" / "PySciMLGrad"
UPSTREAM = JL_PKG / "UPSTREAM.md"
JULIAPKG_JSON = ROOT / "pysciml_grad" / "backends" / "julia" / "juliapkg.json"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
COMMIT = re.compile(r"\b[0-9a-f]{40}\b")


def section(name: str) -> str:
    text = UPSTREAM.read_text()
    m = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", text, re.S)
    assert m, f"UPSTREAM.md has no {name} section"
    return m.group(1)


def table(name: str):
    rows = []
    for line in section(name).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("package", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append(cells)
    return rows


def upstream_uuids():
    return {row[0]: row[1] for row in table("uuid-table")}


def upstream_compat():
    return {row[0]: row[1] for row in table("compat-table")}


def reserved_fields():
    return set(section("reserved-fields").replace("```", " ").split())


def project():
    with open(JL_PKG / "Project.toml", "rb") as fh:
        return tomllib.load(fh)


def juliapkg_spec():
    with open(JULIAPKG_JSON) as fh:
        return json.load(fh)


# --- the record itself ------------------------------------------------------------------


def test_every_uuid_row_names_its_upstream_file_and_commit():
    rows = table("uuid-table")
    assert len(rows) >= 15
    for name, uuid, source in rows:
        assert UUID.match(uuid), (name, uuid)
        assert COMMIT.search(source), f"{name}: no commit in {source!r}"


def test_the_two_corrected_uuids_are_the_registry_values():
    # Issue 9 bug 1, read from JuliaRegistries/General O/OrdinaryDiffEq{SDIRK,BDF}/Package.toml.
    uuids = upstream_uuids()
    assert uuids["OrdinaryDiffEqSDIRK"] == "2d112036-d095-4a1e-ab9a-08536f3ecdbf"
    assert uuids["OrdinaryDiffEqBDF"] == "6ad6398a-0878-4a85-9266-38940aa047c8"


# --- Project.toml and juliapkg.json against the record ------------------------------------


def test_project_toml_uuids_are_the_upstream_ones():
    p = project()
    uuids = upstream_uuids()
    declared = {**p["deps"], **p.get("weakdeps", {}), **p.get("extras", {})}
    for name, uuid in declared.items():
        assert name in uuids, f"{name} is a dependency but its UUID is not recorded in UPSTREAM.md"
        assert uuid == uuids[name], f"Project.toml: {name} = {uuid}, upstream {uuids[name]}"


def test_juliapkg_json_uuids_are_the_upstream_ones():
    uuids = upstream_uuids()
    for name, entry in juliapkg_spec()["packages"].items():
        if name == "PySciMLGrad":
            assert entry["uuid"] == project()["uuid"]
            continue
        assert entry["uuid"] == uuids[name], f"juliapkg.json: {name} = {entry['uuid']}, upstream {uuids[name]}"


def test_cuda_packages_of_the_installer_are_the_upstream_ones():
    uuids, compat = upstream_uuids(), upstream_compat()
    for name, entry in runtime.CUDA_PACKAGES.items():
        assert entry["uuid"] == uuids[name]
        assert entry["version"] == compat[name]


def test_version_bounds_are_the_recorded_ones():
    compat = upstream_compat()
    p = project()["compat"]
    for name, bound in p.items():
        if name == "Test":
            continue  # a stdlib: its version is Julia's
        assert name in compat, f"the bound on {name} has no reason recorded in UPSTREAM.md"
        assert bound == compat[name], f"Project.toml: {name} = {bound!r}, UPSTREAM.md {compat[name]!r}"
    spec = juliapkg_spec()
    assert spec["julia"] == compat["julia"]
    for name, entry in spec["packages"].items():
        if name != "PySciMLGrad":
            assert entry["version"] == compat[name] == p[name], name


def test_juliacall_bound_admits_no_pythoncall_below_the_julia_bound():
    # juliacall X pins PythonCall =X (pysrc/juliacall/juliapkg.json), so the lowest
    # juliacall allowed must be at least the PythonCall bound of Project.toml.
    with open(ROOT / "pyproject.toml", "rb") as fh:
        py = tomllib.load(fh)
    floor = tuple(int(x) for x in project()["compat"]["PythonCall"].split("."))
    for group in ("julia", "test"):
        req = next(r for r in py["project"]["optional-dependencies"][group] if r.startswith("juliacall"))
        m = re.search(r">=\s*([0-9.]+)", req)
        assert m and tuple(int(x) for x in m.group(1).split(".")) >= floor, req
        assert "<0.10" in req.replace(" ", ""), req


# --- reserved field names (issue 9 bug 2) -------------------------------------------------

STRUCT = re.compile(r"^(\s*)(?:mutable\s+)?struct\s+(\w+)[^\n]*\n(.*?)^\1end\b", re.S | re.M)
FIELD = re.compile(r"^\s*(\w+)\s*(?:::.*)?$")


def struct_fields(source: str):
    """``{struct name: [field names]}`` of the Julia source (field lines ``name`` or
    ``name::T``; inner constructors and comments are skipped)."""
    out = {}
    for m in STRUCT.finditer(source):
        fields = []
        for line in m.group(3).splitlines():
            line = line.split("#", 1)[0]
            fm = FIELD.match(line)
            if fm and fm.group(1) not in ("end", "function", "new"):
                fields.append(fm.group(1))
        out[m.group(2)] = fields
    return out


def test_struct_parser_sees_fields():
    # The parser must see the very field that broke every gradient (a test that cannot fail
    # would otherwise pass on any source).
    src = 'struct PyRHS\n    f::Py\n    vjp::Py\nend\n\nstruct Setup{P}\n    prob::P # a comment\nend\n'
    assert struct_fields(src) == {"PyRHS": ["f", "vjp"], "Setup": ["prob"]}


def test_reserved_list_is_the_scimlbase_one():
    names = reserved_fields()
    assert {"vjp", "jac", "jvp", "paramjac", "vjp_p", "tgrad", "Wfact", "mass_matrix", "observed"} <= names
    assert len(names) >= 30


def test_no_struct_of_the_julia_package_has_a_reserved_field_name():
    reserved = reserved_fields()
    sources = sorted((JL_PKG / "src").glob("*.jl")) + sorted((JL_PKG / "ext").glob("*.jl"))
    seen = {}
    for path in sources:
        for name, fields in struct_fields(path.read_text()).items():
            seen[name] = fields
            clash = sorted(set(fields) & reserved)
            assert not clash, (
                f"{path.name}: struct {name} has field(s) {clash}, which SciMLBase's ODEFunction "
                "constructor copies into its own slots (UPSTREAM.md, reserved field names)"
            )
    assert "PyRHS" in seen and len(seen["PyRHS"]) == 2, seen


# --- hosts named to the user ----------------------------------------------------------


def test_julia_download_host_is_the_one_juliapkg_uses():
    text = UPSTREAM.read_text()
    m = re.search(r'_julia_versions_url = "https://([^/"]+)/', text)
    assert m, "UPSTREAM.md does not record juliapkg's download host"
    hosts = [h for h, _ in runtime.servers_for("julia")]
    assert m.group(1) in hosts
    assert m.group(1) not in [h for h, _ in runtime.servers_for("packages")]


@pytest.mark.parametrize("path", ["src/PySciMLGrad.jl", "src/rhs.jl", "src/solve.jl", "src/arrays.jl"])
def test_julia_sources_do_not_call_removed_solve_keywords(path):
    # gamma/qmin/qmax are controller fields in OrdinaryDiffEq v7 (UPSTREAM.md); nothing
    # in the Julia package may build them as solve keywords either.
    text = (JL_PKG / path).read_text()
    assert not re.search(r"\b(gamma|qmin|qmax)\s*=", text)
