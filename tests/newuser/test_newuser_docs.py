"""Item 8: the docs agree with the code and with each other.

Every extra the docs name exists in pyproject.toml, with the packages the docs say it adds;
the extras table lists every extra; and the contradictions of issue 28 stay gone (serving
Inngest from Django and Flask "coming", `[inngest]` bringing FastAPI and uvicorn, integers
beyond 2^53 "not refused yet")."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
}


def name_of(requirement: str) -> str:
    return re.split(r"[\[<>=;!~ @]", requirement, maxsplit=1)[0].lower()


def provides(extra: str | None, seen: frozenset[str] = frozenset()) -> set[str]:
    """What installing `jobs-core[extra]` brings (None: the core): each requirement's name and
    its own extras (`redis[hiredis]` gives redis and hiredis), self-references followed."""
    project = PYPROJECT["project"]
    requirements = (
        project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    )
    names: set[str] = set()
    for requirement in requirements:
        name = name_of(requirement)
        extras = re.search(r"\[([^\]]*)\]", requirement)
        listed = [e.strip() for e in extras.group(1).split(",")] if extras else []
        if name == "jobs-core":
            for inner in listed:
                if inner not in seen:
                    names |= provides(inner, seen | {inner})
            continue
        names.add(name)
        names.update(listed)
    return names


def extras_table() -> dict[str | None, str]:
    """The rows of getting-started's extras table: extra (None for the core) -> what it adds."""
    page = PAGES["docs/getting-started.md"]
    table = page[page.index("| extra | adds | for |") :].split("\n\n")[0]
    rows: dict[str | None, str] = {}
    for line in table.splitlines()[2:]:
        extra, adds, _ = (cell.strip() for cell in line.strip("|").split("|"))
        rows[None if extra == "(none)" else extra.strip("`")] = adds
    return rows


def test_every_extra_the_docs_name_exists() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    named: dict[str, set[str]] = {}
    for page, text in PAGES.items():
        for group in re.findall(r"jobs-core\[([a-z0-9,\- ]+)\]", text):
            for extra in group.split(","):
                named.setdefault(extra.strip(), set()).add(page)
        for extra in re.findall(r"`\[([a-z0-9\-]+)\]`", text):  # `[inngest-flask]` after one
            named.setdefault(extra, set()).add(page)
    unknown = {extra: pages for extra, pages in named.items() if extra not in extras}
    assert not unknown, unknown
    assert {"celery", "dramatiq", "inngest", "inngest-fastapi"} <= set(named)


def test_the_extras_table_lists_every_extra_with_the_packages_it_adds() -> None:
    rows = extras_table()
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    assert set(rows) == extras | {None}, set(rows) ^ (extras | {None})
    for extra, adds in rows.items():
        if extra in ("all", "dev"):
            continue
        claimed = set(re.findall(r"`([A-Za-z0-9_.\-]+)`", adds))
        assert claimed, extra
        assert claimed <= provides(extra), (extra, claimed - provides(extra))
    assert {"fastapi", "uvicorn"}.isdisjoint(provides("inngest"))
    assert {"inngest", "fastapi", "uvicorn"} <= provides("inngest-fastapi")
    others = extras - {"all", "dev"}
    assert provides("all") >= set().union(*(provides(extra) for extra in others))


def test_no_page_says_the_inngest_extra_brings_fastapi_or_uvicorn() -> None:
    """What a page says an install brings, in parentheses after it (`pip install
    'jobs-core[inngest]'` (the SDK, httpx...)), is what that extra brings."""
    for page, text in PAGES.items():
        text = " ".join(text.split())
        for extra, said in re.findall(r"jobs-core\[([a-z0-9\-]+)\][`'\"]*\s*\(([^)]*)\)", text):
            for package in ("FastAPI", "uvicorn", "Flask", "Django"):
                if package in said:
                    assert package.lower() in provides(extra), (page, extra, said)


def test_serving_inngest_from_django_and_flask_is_not_coming_it_is_there() -> None:
    for framework, helper in (("django", "serve_django"), ("flask", "serve_flask")):
        page = PAGES[f"docs/frameworks/{framework}.md"]
        assert "is coming" not in page and "Until then" not in page
        assert "## Serving the jobs to Inngest" in page and f"{helper}(" in page
        assert f"jobs-core[inngest-{framework}]" in page


def test_the_contract_says_integers_beyond_2_53_are_refused() -> None:
    c10 = PAGES["docs/contract.md"].split("- **C10**")[1].split("- **C11**")[0]
    assert "yet" not in c10 and "refused at dispatch" in c10 and "JobPayloadError" in c10


def test_the_docs_name_the_console_script_and_its_backend_option() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {"jobs-core": "jobs_core.__main__:main"}
    cli = PAGES["docs/cli.md"]
    assert "jobs-core worker" in cli and "--backend" in cli and "python -m jobs_core" in cli
