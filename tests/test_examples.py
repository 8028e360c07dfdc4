"""The examples stay true: every config loads, and full.toml states exactly the defaults."""

from pathlib import Path

import pytest

from cryptfs.config import Config, load

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "config").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads(path):
    import backends
    from cryptfs.config import backend_options
    config = load(str(path))
    backend_options(config, backends.backend_class(config.backend.name).OPTIONS)


def test_full_config_is_the_defaults():
    assert load(str(next(p for p in CONFIGS if p.name == "full.toml"))) == Config()


def generated_tables() -> dict[str, str]:
    """The README's generated blocks: name → what they must hold."""
    from cryptfs.config import reference
    from cryptfs.formats.params import FormatOptions, PbkdfOptions
    from cryptfs.options import table
    return {"config-reference": reference(),
            "format-options": table(FormatOptions, skip=PbkdfOptions),
            "pbkdf-options": table(PbkdfOptions)}


@pytest.mark.parametrize("name, expected", generated_tables().items())
def test_readme_generated_tables_are_current(name, expected):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index(f"<!-- {name}:")
    block = readme[readme.index("\n", start) + 1:readme.index(f"<!-- /{name} -->")]
    assert block.strip() == expected.strip()


BACKENDS_WITH_OPTIONS = ["multidu", "engine"]


@pytest.mark.parametrize("backend", BACKENDS_WITH_OPTIONS)
def test_readme_documents_every_backend_option(backend):
    import backends
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, (_, default, _, _) in backends.backend_class(backend).OPTIONS.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert f"| `{name}` | `{shown}` |" in readme, name


@pytest.mark.parametrize("backend", BACKENDS_WITH_OPTIONS)
def test_full_config_lists_every_backend_key_with_its_default(backend):
    import tomllib

    import backends
    text = next(p for p in CONFIGS if p.name == "full.toml").read_text()
    section = text[text.index(f"# [backend.{backend}]"):]
    section = section[:section.index("\n\n")] if "\n\n" in section else section
    uncommented = "\n".join(line.removeprefix("# ") for line in section.splitlines())
    listed = tomllib.loads(uncommented)["backend"][backend]
    assert listed == {k: default for k, (_, default, _, _)
                      in backends.backend_class(backend).OPTIONS.items()}
