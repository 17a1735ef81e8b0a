"""Sweep 30: whole detectors as a deployment engineer uses them (README "Sweep 30").

- `verify compare` of a whole detector's file, the check a user reaches for after editing it, ran the file on an NCHW
  batch: the ONNX file ended, after 19 s, in ONNX Runtime's "Invalid rank for input: image Got: 4 Expected: 3. Please
  fix either the inputs/outputs or the model", the TorchScript file in "cannot be loaded by torch.jit.load: Unknown
  builtin op: torchvision::nms" (exit 2 both, neither saying what to do). A file whose folder's manifest is a
  detector's is now refused before anything is loaded, in one line that names the folder's own check
  (verify/api.py `refuse_detector_file`)."""

from __future__ import annotations

from tests.helpers import invoke
from verify.detect.export import FILE_NAMES


def test_compare_of_a_detector_file_names_its_folders_check_before_loading(detector_export):
    """Before: exit 2 after loading and running each file, on ONNX Runtime's rank error or TorchScript's unknown
    torchvision op. Now exit 2 at once for each of the folder's model files, the folder's `verify artifact ...
    --rebuild` named, nothing loaded."""
    folder = detector_export[1]
    names = sorted({name for name in FILE_NAMES.values() if (folder / name).is_file()})
    assert len(names) == 2, names  # the export's default formats: the ONNX and the TorchScript file
    for name in names:
        result = invoke("compare", folder / name, folder / name)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "is a whole detector's file" in text, text
        assert f"verify artifact {folder} --rebuild" in text, text
        assert "Loading both sides" not in text and "Invalid rank" not in text and "torchvision::nms" not in text
