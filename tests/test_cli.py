"""The ``berter`` console script's own options."""

from importlib.metadata import version

from berter.cli import main


def test_version_prints_the_installed_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"berter {version('berter')}"
