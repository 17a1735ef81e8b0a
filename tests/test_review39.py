"""Review 39: files that execute code on load, attacked again, and one misleading message. Each test fails without
its fix.

- A `.pt2` with entries torch.export.save never writes (a shared library and a pickle under `extra/` and `data/`)
  passed its integrity check and loaded (`verify artifact --trust-unsigned-code`, exit 0); torch 2.14 leaves them
  unread, a loader that reads them would run them. The scan refuses them now.
- A `--model` factory that closed `sys.stdout` in its worker ended with exit 2 and torch.export's advice "export with
  --static", which was not the cause: the message now says the model closed the stream."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.errors import ArtifactError, ExportError


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny program as torch.export.save writes it."""
    path = tmp_path_factory.mktemp("review39") / "tiny.pt2"
    torch.manual_seed(0)
    program = torch.export.export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), (torch.randn(1, 3, 8, 8),))
    torch.export.save(program, str(path))
    return path


def with_entry(saved: Path, out: Path, inner: str, data: bytes) -> Path:
    with zipfile.ZipFile(saved) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    root = members[0][0].split("/", 1)[0]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, content in [*members, (f"{root}/{inner}", data)]:
            archive.writestr(name, content)
    return out


@pytest.mark.parametrize(("inner", "data", "match"), [
    ("extra/evil.so", b"\x7fELF" + bytes(64), "extra/evil.so.*does not write"),
    ("data/evil.pkl", b"\x80\x04K\x01.", "data/evil.pkl.*does not write"),
    ("data/executorch/program.pte", b"\x00" * 16, "data/executorch/program.pte.*does not write"),
    ("extra/notes.json", b"\xff\xfe\x00binary", "not text"),
], ids=["so", "pickle", "executorch", "binary-extra"])
def test_a_pt2_entry_torch_export_save_never_writes_is_refused(saved, tmp_path, inner, data, match):
    """Before: each archive passed the scan ("1 program(s) ... nothing pickled") and loaded; now the scan (the
    folder's integrity check, and every load) refuses it, naming the entry. The saved archive still passes."""
    from exporter.formats.pt2 import load_program, scan_archive

    assert "nothing pickled" in scan_archive(saved)
    crafted = with_entry(saved, tmp_path / "crafted.pt2", inner, data)
    with pytest.raises(ArtifactError, match=match):
        scan_archive(crafted)
    with pytest.raises(ArtifactError, match=match):
        load_program(crafted)


def test_an_extra_text_file_is_still_metadata(saved, tmp_path):
    """torch.export.save(extra_files=...) writes UTF-8 strings under extra/: one of ours (or a user's) passes."""
    from exporter.formats.pt2 import scan_archive

    assert "nothing pickled" in scan_archive(with_entry(saved, tmp_path / "ok.pt2", "extra/notes.txt", b"{}"))


CLOSES = textwrap.dedent("""
    import sys
    import torch

    def make():
        sys.stdout.close()
        return torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 16, 16)
""")


def test_a_model_that_closed_stdout_is_told_so_not_to_export_static(tmp_path):
    """Before: exit 2, "torch.export failed for closes.py:make: I/O operation on closed file; export with --static
    (its dynamic height and width are what torch could not trace)". Now the line says what the model did."""
    from exporter.formats.pt2 import ExportedProgramFormat
    from tests.helpers import invoke

    source = tmp_path / "closes.py"
    source.write_text(CLOSES)
    result = invoke("export", "--model", f"{source}:make", "--format", ExportedProgramFormat.name, "--samples", "1",
                    "--no-cache", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "closed sys.stdout in its worker process" in result.output, result.output
    assert "--static" not in result.output, result.output


@pytest.mark.parametrize(("stream", "value", "did"), [
    ("stdout", None, "set sys.stdout to None"),
    ("stderr", "closed", "closed sys.stderr"),
])
def test_a_write_to_a_stream_the_model_broke_names_the_stream(monkeypatch, stream, value, did):
    """The worker's message for a failed write to a stream the model set to None or closed (wrapped by torch.export
    in its own error), in-process; an unrelated error with the streams intact keeps its own message."""
    import io
    import sys

    from verify.pipeline.isolation import _error_message

    def raised(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except Exception as exc:
                raise ExportError("torch.export failed for m.py:make: ...; export with --static") from exc
        except ExportError as exc:
            return exc

    closed = io.StringIO()
    closed.close()
    failed = raised(AttributeError("'NoneType' object has no attribute 'write'") if value is None
                    else ValueError("I/O operation on closed file."))
    monkeypatch.setattr(sys, stream, None if value is None else closed)
    message = _error_message(failed, "your model's code")[1][2]
    monkeypatch.undo()
    assert did in message and "--static" not in message, message
    intact = _error_message(raised(ValueError("I/O operation on closed file.")), "your model's code")[1][2]
    assert "--static" in intact and "sys." not in intact, intact


def test_a_matrix_cell_whose_model_closed_stdout_is_told_so(monkeypatch):
    """The same line for a `--model` matrix cell (its worker reports errors its own way: verify/matrix/cell.py); a
    registered backbone's cell keeps the error it raised."""
    import io
    import sys
    from types import SimpleNamespace

    from verify.matrix.cell import _user_stream

    closed = io.StringIO()
    closed.close()
    try:
        try:
            raise ValueError("I/O operation on closed file.")
        except ValueError as cause:
            raise ExportError("torch.export failed for m.py:make: ...; export with --static") from cause
    except ExportError as exc:
        failed = exc
    user, registered = (SimpleNamespace(request=SimpleNamespace(spec=SimpleNamespace(runs_user_code=runs)))
                        for runs in (True, False))
    monkeypatch.setattr(sys, "stdout", closed)
    said, kept = _user_stream(user, failed), _user_stream(registered, failed)
    monkeypatch.undo()
    assert said is not None and "closed sys.stdout" in said and "--static" not in said, said
    assert kept is None
