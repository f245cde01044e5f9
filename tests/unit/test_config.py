import pytest

from tunesmith.config import ConfigError, load_config
from tunesmith.methods.lora import LoraSettings

GOOD = """\
data:
  train: data.jsonl
method:
  name: lora
  r: 8
train:
  lr: 1.0e-4
"""


def test_good_config_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert isinstance(cfg.method, LoraSettings) and cfg.method.r == 8
    assert cfg.train.lr == 1e-4 and cfg.model.name == "smollm2-135m-instruct"


def test_unknown_keys_and_bad_values_reported_together_with_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: x.jsonl\n  trian_on: all\nmethod:\n  name: lora\n  r: 0\ntrain:\n  lr: fast\nextra: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "4 problem(s)" in text
    assert f"{path}:3: data.trian_on: unknown key" in text
    assert f"{path}:6: method.r" in text
    assert f"{path}:8: train.lr" in text
    assert f"{path}:9: extra: unknown key" in text


def test_overrides_from_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    cfg = load_config(path, ["train.lr=3e-4", "method.r=32", "train.pack=false", "output.dir=/tmp/x"])
    assert cfg.train.lr == 3e-4 and cfg.method.r == 32 and cfg.train.pack is False and cfg.output.dir == "/tmp/x"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, ["train.nonsense=1"])
    with pytest.raises(ConfigError, match="path.to.key=value"):
        load_config(path, ["train.lr"])
    for value in ("[1, 2", "\x1b", "{a: "):  # YAML cannot read these: a clear error naming the --set, not a traceback
        with pytest.raises(ConfigError, match=r"--set 'output.dir=.*': its value is not valid YAML .*quote it"):
            load_config(path, [f"output.dir={value}"])
    assert load_config(path, ["output.dir='[1, 2'"]).output.dir == "[1, 2"


def test_overrides_reach_into_lists_and_say_what_is_wrong(tmp_path):
    from tunesmith.config import read_config
    from tunesmith.eval.config import EvalConfig

    path = tmp_path / "e.yaml"
    path.write_text("data:\n  train: a.jsonl\n  test: t.jsonl\nvariants:\n  - kind: base\n  - kind: tuned\n    run: runs/a\n")
    cfg = read_config(EvalConfig, path, ["variants.1.run=runs/b"])
    assert cfg.variants[1].run == "runs/b"
    with pytest.raises(ConfigError, match=r"variants is a list of 2; '5' is not one of its indices"):
        read_config(EvalConfig, path, ["variants.5.run=runs/b"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, ["train.lr=1", "train.lr.x=2"])


def test_method_switch_rejects_keys_of_other_method(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: x.jsonl\nmethod:\n  name: full\n  r: 8\n")
    with pytest.raises(ConfigError, match="method.r: unknown key"):
        load_config(path)


def test_template_format_needs_template():
    with pytest.raises(ConfigError, match="needs a `template:`"):
        load_config(None, ["data.train=x.jsonl", "data.format=template"])


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_bad_value_from_the_command_line_is_blamed_on_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lr=fast"])
    assert "--set train.lr=fast: train.lr:" in str(err.value)


def test_options_win_over_set_and_set_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    cfg = load_config(path, ["train.lr=3e-4", "method.r=4"], options={"train.lr": 5e-4, "output.dir": None})
    assert cfg.train.lr == 5e-4 and cfg.method.r == 4 and cfg.output.dir == "runs/latest"  # None: option not given


def test_union_tags_never_show_in_error_locations():
    """pydantic reports variants.0.tuned.run; the user wrote variants.0.run. Handled once, for every config."""
    from tunesmith.config import read_config
    from tunesmith.eval.config import EvalConfig

    with pytest.raises(ConfigError) as err:
        read_config(EvalConfig, None, ["data.test=t.jsonl", "data.train=t.jsonl", "variants=[{kind: tuned}, {kind: rag, k: 0}]"])
    text = str(err.value)
    assert "variants.0.run: Field required" in text and "variants.1.k: unknown key" in text
    assert ".tuned." not in text and ".rag." not in text
