"""nixrepro.config: nixrepro.toml or [tool.nixrepro] in pyproject.toml, strictly validated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nixrepro.config import Config, RunConfig, SecretsConfig, load
from nixrepro.errors import ConfigError, UsageError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_config_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.run.flake is None
    assert config.run.verify_contents is False
    assert config.secrets.extra_names == []
    assert config.source is None


def test_pyproject_without_a_nixrepro_table_gives_the_defaults(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.ruff]\nline-length = 100\n')
    assert load(tmp_path) == Config()


def test_nixrepro_toml_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "nixrepro.toml", """
[run]
flake = ".#env"
verify_contents = true

[secrets]
extra_names = ["DB_URL", "hf_home_token"]
""")
    config = load(tmp_path)
    assert config.run == RunConfig(flake=".#env", verify_contents=True)
    assert config.secrets == SecretsConfig(extra_names=["DB_URL", "hf_home_token"])
    assert config.source == str(path)


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    write(tmp_path / "nixrepro.toml", '[run]\nflake = ".#gpu"\n')
    config = load(tmp_path)
    assert config.run.flake == ".#gpu"
    assert config.run.verify_contents is False
    assert config.secrets.extra_names == []


def test_tool_nixrepro_in_pyproject_is_read(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", """
[project]
name = "experiment"

[tool.nixrepro.run]
flake = ".#train"

[tool.nixrepro.secrets]
extra_names = ["HF_HOME_TOKEN"]
""")
    config = load(tmp_path)
    assert config.run.flake == ".#train"
    assert config.secrets.extra_names == ["HF_HOME_TOKEN"]
    assert config.source == f"{pyproject} [tool.nixrepro]"


def test_nixrepro_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.nixrepro.run]\nflake = ".#from-pyproject"\n')
    write(tmp_path / "nixrepro.toml", '[run]\nflake = ".#from-nixrepro-toml"\n')
    config = load(tmp_path)
    assert config.run.flake == ".#from-nixrepro-toml"
    assert config.source == str(tmp_path / "nixrepro.toml")


def test_unknown_key_names_the_file_and_the_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path / "nixrepro.toml", '[run]\nflakes = ".#env"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == (
        f"{path}: unknown key 'run.flakes'; known keys here: run.flake, run.verify_contents."
    )


def test_unknown_section_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "nixrepro.toml", '[stage]\ncmd = "python train.py"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: unknown key 'stage'; known keys here: ")
    known = message.removesuffix(".").split("known keys here: ")[1].split(", ")
    assert {"run", "secrets"} <= set(known) and known == sorted(known)


def test_unknown_key_in_pyproject_names_pyproject_and_the_table(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", "[tool.nixrepro.secrets]\nextra = []\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == (
        f"{pyproject} [tool.nixrepro]: unknown key 'secrets.extra'; known keys here: secrets.extra_names."
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[run]\nverify_contents = "yes"\n', "'run.verify_contents' must be a boolean, not a string."),
        ("[run]\nverify_contents = 1\n", "'run.verify_contents' must be a boolean, not an integer."),
        ("[run]\nflake = 3\n", "'run.flake' must be a string, not an integer."),
        ("[run]\nflake = true\n", "'run.flake' must be a string, not a boolean."),
        ('[secrets]\nextra_names = "DB_URL"\n', "'secrets.extra_names' must be a list, not a string."),
        (
            '[secrets]\nextra_names = ["DB_URL", 7]\n',
            "'secrets.extra_names[1]' must be a string, not an integer.",
        ),
    ],
)
def test_wrong_type_names_the_key_and_both_types(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path / "nixrepro.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "nixrepro.toml", 'run = ".#env"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{path}: 'run' must be a table, not a string."


@pytest.mark.parametrize("name", ["nixrepro.toml", "pyproject.toml"])
def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "[run\nflake = \n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not valid TOML")
    assert message.endswith("; fix the syntax.")


def test_config_errors_are_usage_errors_with_exit_code_2(tmp_path: Path) -> None:
    write(tmp_path / "nixrepro.toml", "[nope]\n")
    with pytest.raises(UsageError) as caught:
        load(tmp_path)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("obj", "attribute", "value"),
    [
        (Config(), "run", RunConfig(flake="x")),
        (Config(), "source", "elsewhere"),
        (RunConfig(), "flake", ".#other"),
        (RunConfig(), "verify_contents", True),
        (SecretsConfig(), "extra_names", ["X"]),
    ],
)
def test_config_is_frozen(obj: object, attribute: str, value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, value)


@pytest.mark.parametrize(("toml", "message"), [
    ('[tracker]\nkind = "mlflow"\n', "'tracker.kind' must be \"wandb\" (or left out), not 'mlflow'."),
    ('[tracker]\nkind = "wandb"\nmode = "sometimes"\n',
     "'tracker.mode' must be one of online, offline, disabled, not 'sometimes'."),
])
def test_a_tracker_nixrepro_does_not_know_is_an_error_when_the_config_is_read(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = write(tmp_path / "nixrepro.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(("toml", "message"), [
    ("[stages.a]\ncmd = 3\n", "'stages.a.cmd' must be a string or a list of strings, not an integer."),
    ("[stages.a]\ncmd = ['python', 3]\n", "'stages.a.cmd[1]' must be a string, not an integer."),
    ("[stages.a]\ncmd = 'true'\nparams = { lr = [1] }\n",
     "'stages.a.params.lr' must be an integer, a number, a boolean or a string, not a list."),
    ("[stages.a]\ncmd = 'true'\nouts = []\n", "unknown key 'stages.a.outs'; known keys here: stages.a.after, "
     "stages.a.cmd, stages.a.deps, stages.a.env, stages.a.inputs, stages.a.outputs, stages.a.params."),
])
def test_a_wrong_value_inside_a_named_table_names_the_whole_key(tmp_path: Path, toml: str,
                                                                message: str) -> None:
    path = write(tmp_path / "nixrepro.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_config_is_read_once_while_it_stays_as_it_was(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from nixrepro import config as config_module

    write(tmp_path / "nixrepro.toml", '[run]\nflake = ".#a"\n')
    reads: list[Path] = []
    real = config_module._load
    monkeypatch.setattr(config_module, "_load", lambda root: reads.append(root) or real(root))
    assert load(tmp_path).run.flake == ".#a" and load(tmp_path).run.flake == ".#a"
    assert len(reads) == 2  # just written: within a clock tick of a rewrite, read each time
    now = time.time_ns()
    monkeypatch.setattr(config_module.time, "time_ns", lambda: now + 5_000_000_000)
    load(tmp_path)
    load(tmp_path)
    assert len(reads) == 3
    write(tmp_path / "nixrepro.toml", '[run]\nflake = ".#b"\n')
    assert load(tmp_path).run.flake == ".#b"
