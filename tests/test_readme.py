"""The README's commands run as written: every ```sh block, in order, one command at a time, in
a fresh copy of the tree (what a clone of it holds), with nothing installed but what the README
installs.  A block that cannot run here says why, in a ``<!-- readme-test: skip: ... -->`` line
just above it.

Passphrases come from standard input, one line per question, as they do when it is not a
terminal.  ``make install`` links ``cryptfs`` into a private PREFIX put first on PATH, and the
demo's fio jobs run 1 s each (``DEMO_RUNTIME``), so the test leaves the machine as it was."""

import os
import re
import shutil
import subprocess

from helpers import ROOT, force_unmount, needs, needs_fuse

BLOCK = re.compile(r"(?:<!-- readme-test: skip: (?P<why>[^>]*?) -->\n)?```sh\n(?P<body>.*?)```",
                   re.S)
PASSPHRASE = "a passphrase from the README test"


def blocks(readme: str) -> list[tuple[str | None, list[str]]]:
    """(why it is skipped or None, its commands) for each ```sh block, in order."""
    found = []
    for match in BLOCK.finditer(readme):
        text = match["body"].replace("\\\n", " ")
        commands = [line for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
        found.append((match["why"], commands))
    return found


def fresh_copy(target) -> None:
    """The tree as a clone of it would hold it (tracked and new files, nothing ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.exists(ROOT / name):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)


def test_every_block_runs_or_says_why_not():
    found = blocks((ROOT / "README.md").read_text())
    assert len(found) >= 3 and all(commands for _, commands in found)
    assert all(why is None or why.strip() for why, _ in found)


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
        for why, commands in blocks((clone / "README.md").read_text()):
            if why:
                continue
            for command in commands:
                result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=clone,
                                        env=env, input=f"{PASSPHRASE}\n" * 2, text=True,
                                        capture_output=True, timeout=900)
                assert result.returncode == 0, \
                    f"README: `{command}` exited {result.returncode}:\n" \
                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
                ran += 1
    finally:
        for mountpoint in (clone / "mnt",):
            if mountpoint.is_dir():
                force_unmount(mountpoint)
    assert ran >= 10
    assert os.path.realpath(prefix / "bin" / "cryptfs") == str(clone / ".venv/bin/cryptfs")
