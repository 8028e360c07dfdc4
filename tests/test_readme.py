"""The README's commands run as written: every ```sh block of README.md, then of docs/*.md (in
name order), in order, one command at a time, in one fresh copy of the tree (what a clone of it
holds), with nothing installed but what the README installs.  A block that cannot run here says
why, in a ``<!-- readme-test: skip: ... -->`` line just above it.  The docs' blocks run after the
README's, in the same copy: they may use what the README made (``disk.img``, its passphrase, the
``mnt`` directory, ``cryptfs`` on PATH) and must leave nothing mounted.  A shell command in a
fence of another language (bash, shell, console) would escape the test, so there is none.

Passphrases come from standard input, one line per question, as they do when it is not a
terminal.  ``make install`` links ``cryptfs`` into a private PREFIX put first on PATH, and the
demo's fio jobs run 1 s each (``DEMO_RUNTIME``), so the test leaves the machine as it was."""

import os
import re
import subprocess

from helpers import ROOT, force_unmount, fresh_copy, needs, needs_fuse

BLOCK = re.compile(r"(?:<!-- readme-test: skip: (?P<why>[^>]*?) -->\n)?```sh\n(?P<body>.*?)```",
                   re.S)
PASSPHRASE = "a passphrase from the README test"
SKIP_LINE = re.compile(r"^<!-- readme-test: skip:.*-->$", re.M)
FENCE = re.compile(r"^```(?P<lang>[^`\n]*)$", re.M)
#: fences that hold no command to run
NOT_SHELL = {"", "python", "toml", "text", "json", "ini", "c"}


def doc_files(root=ROOT) -> list:
    """The files whose ```sh blocks run, in the order they run: README.md, then docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(readme: str) -> list[tuple[str | None, list[str]]]:
    """(why it is skipped or None, its commands) for each ```sh block, in order."""
    found = []
    for match in BLOCK.finditer(readme):
        text = match["body"].replace("\\\n", " ")
        commands = [line for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
        found.append((match["why"], commands))
    return found


def test_every_block_runs_or_says_why_not():
    found = blocks((ROOT / "README.md").read_text())
    assert len(found) >= 3 and all(commands for _, commands in found)
    assert len(doc_files()) > 1, "docs/*.md are missing"
    for path in doc_files():
        text = path.read_text()
        name = path.relative_to(ROOT)
        for why, commands in blocks(text):
            assert commands, f"{name}: an empty ```sh block"
            assert why is None or why.strip(), f"{name}: a skip without a reason"
        # every skip line is directly above a ```sh block: none is left stray or misplaced
        for line in SKIP_LINE.finditer(text):
            assert text.startswith("```sh\n", line.end() + 1), \
                f"{name}: `{line[0]}` is not directly above a ```sh block"
        # shell commands are only ever in ```sh blocks, the ones this test runs
        languages = [fence["lang"].strip() for fence in FENCE.finditer(text)][::2]
        assert set(languages) <= NOT_SHELL | {"sh"}, \
            f"{name}: fences {sorted(set(languages) - NOT_SHELL - {'sh'})}: use ```sh"
        assert languages.count("sh") == len(blocks(text)), f"{name}: a ```sh block not parsed"


@needs_fuse
@needs("cryptsetup", "fio", "mkfs.ext4", "git")
def test_readme_commands_run_as_written(tmp_path):
    clone, prefix = tmp_path / "clone", tmp_path / "prefix"
    clone.mkdir()
    fresh_copy(clone)
    env = dict(os.environ, PREFIX=str(prefix), DEMO_RUNTIME="1",
               PATH=f"{prefix / 'bin'}:{os.environ['PATH']}")
    ran = 0
    try:
        for path in doc_files(clone):
            for why, commands in blocks(path.read_text()):
                if why:
                    continue
                for command in commands:
                    result = subprocess.run(["bash", "-o", "pipefail", "-c", command],
                                            cwd=clone, env=env, input=f"{PASSPHRASE}\n" * 2,
                                            text=True, capture_output=True, timeout=900)
                    assert result.returncode == 0, \
                        f"{path.relative_to(clone)}: `{command}` exited {result.returncode}:" \
                        f"\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
                    ran += 1
    finally:
        for mountpoint in (clone / "mnt",):
            if mountpoint.is_dir():
                force_unmount(mountpoint)
    assert ran >= 20
    assert os.path.realpath(prefix / "bin" / "cryptfs") == str(clone / ".venv/bin/cryptfs")
