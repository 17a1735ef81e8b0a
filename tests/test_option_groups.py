"""Option groups (issue 15): the options several commands share are defined once (verify/cli/groups.py, the parts
in verify/cli/options.py) and every command that takes a group offers all of its flags; each format's own options come
from its Options (exporter/plugin_options.py), so a format added in one module and one registry line shows in
export and matrix --help and its value reaches the export; a bad value is one `error:` line and exit 2."""

import inspect
import json

import pytest
from typer.testing import CliRunner

from exporter.artifacts import ArtifactMeta
from exporter.export import export_model
from exporter.formats import FORMATS
from exporter.formats.aoti import AotiOptions
from exporter.formats.onnx import OPSET_MIN, OnnxOptions, installed_max_opset
from exporter.formats.torchscript import TorchScriptOptions
from exporter.plugin_options import option_fields
from tests.data.dummy_format import DummyFormat, DummyOptions
from verify.cli import app, groups
from verify.cli import commands as command_module
from verify.cli.matrix import matrix

COMMAND_GROUPS = {
    "export": (groups.JUDGED_RUN, groups.EXPORT, groups.REPORTS),
    "compare": (groups.JUDGED_RUN, groups.REPORTS),
    "matrix": (groups.RUN, groups.EXPORT),
    "explain": (groups.FEED,),
    "artifact": (groups.FOLDER_TRUST, groups.REPORTS, groups.RUNTIME_PLUGINS),
    "preflight": (groups.FOLDER_TRUST, groups.REPORTS, groups.RUNTIME_PLUGINS),
}
"""Which shared groups each command takes."""
COMMANDS = {"export": command_module.export, "compare": command_module.compare, "explain": command_module.explain,
            "artifact": command_module.artifact, "preflight": command_module.preflight, "matrix": matrix}
SCALE = 2.5
[(SCALE_FIELD, SCALE_SPEC)] = option_fields(DummyOptions)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def help_text(command: str) -> str:
    """The command's --help with its wrapping undone."""
    return " ".join(invoke(command, "--help").output.split())


def own_help(parameter: inspect.Parameter) -> str:
    info = next(m for m in parameter.annotation.__metadata__ if hasattr(m, "param_decls"))
    return " ".join(info.help.split())


@pytest.mark.parametrize("command", COMMAND_GROUPS)
def test_each_command_offers_every_flag_of_its_groups_from_the_one_definition(command):
    wrapped = COMMANDS[command].__wrapped__
    assert tuple(wrapped.groups().values()) == COMMAND_GROUPS[command]
    spelled = set(inspect.signature(wrapped.__wrapped__).parameters)
    text = help_text(command)
    for group in COMMAND_GROUPS[command]:
        parameters = group.parameters()
        assert parameters and not spelled & {p.name for p in parameters}  # no command spells a group's option
        for parameter in parameters:
            assert f"{groups.flag_of(parameter)} " in text and own_help(parameter) in text, (command, parameter.name)


def test_each_flag_has_one_definition():
    """No flag is spelled by two parts (plug-ins' options come from the registries), nor by a command beside a
    group it takes."""
    builders = {part.build for gs in COMMAND_GROUPS.values() for g in gs for part in g.parts}
    flags = [groups.flag_of(p) for build in builders for p in groups.Part(build).parameters()]
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)
    for name, command in COMMANDS.items():
        own = {groups.flag_of(p) for p in inspect.signature(command.__wrapped__.__wrapped__).parameters.values()
               if hasattr(p.annotation, "__metadata__")}
        assert not own & {groups.flag_of(p) for g in COMMAND_GROUPS[name] for p in g.parameters()}, name


def test_an_option_named_like_another_is_refused_when_the_app_is_built(dummy_format):
    """A plug-in whose option would silently replace another (here --seed) is a plug-in bug, said at once."""
    clashing = [p.replace(name="seed") for p in groups.EXPORT.parameters() if p.name == SCALE_SPEC.key]
    group = groups.OptionGroup("clash", (groups.Part(lambda **values: {}, lambda: clashing),), dict)

    def command(settings=groups.RUN, extra=group):
        return None

    with pytest.raises(TypeError, match="share a name: seed"):
        assert groups.WithOptionGroups(command).__signature__


@pytest.fixture
def dummy_format():
    with FORMATS.adding("dummy", DummyFormat()):  # the one registry line
        yield


@pytest.fixture
def captured(monkeypatch):
    """What export and matrix hand the library, caught before any work (nothing is built)."""
    import verify.api
    import verify.matrix

    seen = {}

    def catch(*args, **kwargs):
        seen["export"] = kwargs["export"] if "export" in kwargs else args[4]
        raise SystemExit(0)

    monkeypatch.setattr(verify.api, "verify_export", catch)
    monkeypatch.setattr(verify.matrix.MatrixRequest, "create", catch)
    return seen


@pytest.mark.parametrize("command", ["export", "matrix"])
def test_a_format_added_in_one_line_offers_its_option_and_the_value_reaches_the_export(
        command, dummy_format, captured, tmp_path):
    assert f"{SCALE_SPEC.flag} FLOAT {SCALE_SPEC.help}" in help_text(command).replace("<float>", "FLOAT")
    result = invoke(command, "-b", "resnet18", "--format", "dummy", SCALE_SPEC.flag, SCALE)
    assert result.exit_code == 0, result.output
    options = captured["export"]
    assert options.formats == ("dummy",) and options.options_for("dummy") == DummyOptions(scale=SCALE)
    artifact = export_model(None, ArtifactMeta(), None, tmp_path, options, "dummy")
    assert json.loads(artifact.path.read_text()) == {SCALE_SPEC.key: SCALE}


def test_the_built_in_formats_options_reach_the_export(captured):
    result = invoke("export", "-b", "resnet18", "--trace", "--onnx-exporter", "torchscript", "--opset", OPSET_MIN + 10,
                    "--device", "cuda", "--static")
    assert result.exit_code == 0, result.output
    options = captured["export"]
    assert options.options_for("torchscript") == TorchScriptOptions(method="trace")  # the bare flag's value
    assert options.options_for("onnx") == OnnxOptions(exporter="torchscript", opset=OPSET_MIN + 10)
    assert options.options_for("aoti") == AotiOptions(device="cuda")  # from the shared --device
    assert not options.dynamic
    assert invoke("export", "-b", "resnet18").exit_code == 0
    defaults = captured["export"]
    assert {type(o): o for o in defaults.format_options} == {o: o() for o in (TorchScriptOptions, OnnxOptions,
                                                                              AotiOptions)}


@pytest.mark.parametrize(("args", "message"), [
    ((SCALE_SPEC.flag, -1), f"{SCALE_SPEC.flag}': must be >= 0"),
    (("--opset", OPSET_MIN - 1), f"must be between {OPSET_MIN} and"),
    (("--opset", installed_max_opset() + 1), f"the installed onnx knows opsets up to {installed_max_opset()}"),
    (("--onnx-exporter", "tf2onnx"), "'tf2onnx' is not one of 'dynamo', 'torchscript'"),
    (("--seed", -1), "'--seed'"),
    (("--json", "r.json", "--junit", "r.json"), "--json and --junit both write r.json"),
])
@pytest.mark.parametrize("command", ["export", "matrix"])
def test_a_bad_value_is_one_line_and_exit_2(command, args, message, dummy_format, captured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if command == "matrix" and "--junit" in args:
        args, message = ("--json", "r.json", "--html", "r.json"), "--json and --html both write r.json"
    result = invoke(command, "-b", "resnet18", *args)
    lines = result.stderr.strip().splitlines()
    assert (result.exit_code, len(lines)) == (2, 1) and lines[0].startswith("error:"), result.output
    assert message is None or message in lines[0], lines[0]
    assert "export" not in captured


def test_the_library_refuses_what_the_cli_refuses():
    too_new = installed_max_opset() + 1
    with pytest.raises(Exception, match=f"--opset must be between {OPSET_MIN} and .* opsets up to"):
        OnnxOptions(opset=too_new)
    with pytest.raises(Exception, match=f"{SCALE_SPEC.flag} must be >= 0"):
        DummyOptions(scale=-1.0)
