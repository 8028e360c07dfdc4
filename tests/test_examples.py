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


def test_readme_config_reference_is_current():
    from cryptfs.config import reference
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- config-reference")
    block = readme[readme.index("\n", start) + 1:readme.index("<!-- /config-reference -->")]
    assert block.strip() == reference().strip()


def test_readme_documents_every_engine_option():
    from backends.engine import EngineBackend
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, (_, default, _, _) in EngineBackend.OPTIONS.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert f"| `{name}` | `{shown}` |" in readme, name
