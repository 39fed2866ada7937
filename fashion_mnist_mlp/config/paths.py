"""Where each stage reads and writes, relative to the project root; dvc.yaml declares the same
paths (tests/test_dvc_yaml.py checks that the two agree)."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PARAMS_SCHEMA = Path("params.schema.json")  # the validate stage's out, beside params.yaml

RAW_DIR = Path("data/raw")

SPLIT_DIR = Path("data/split")
TRAIN_DATA = SPLIT_DIR / "train.safetensors"
VAL_DATA = SPLIT_DIR / "val.safetensors"
TEST_DATA = SPLIT_DIR / "test.safetensors"
SPLIT_MANIFEST = SPLIT_DIR / "manifest.json"

TRAIN_INIT = Path("models/init.json")  # validate's record of the commit train.init names
TRAIN_MODEL = Path("models/train.safetensors")
TRAIN_RESUME = Path("models/resume/train.safetensors")  # not an out: DVC deletes outs first
SWA_RESUME = Path("models/resume/swa.safetensors")
RESUME_SECTIONS = {
    TRAIN_RESUME: ("split", "model", "train", "numerics"),
    SWA_RESUME: ("split", "model", "train", "swa", "numerics"),
}
"""The params.yaml sections each resume state depends on (directly, or through its inputs):
validate removes a state saved under other values, which no run could resume."""
RESUME_PARAMS_KEY = "params"  # the state file's metadata entry holding Params.digest
SWA_MODEL = Path("models/swa.safetensors")
MODELS = {"train": TRAIN_MODEL, "swa": SWA_MODEL}

TRAIN_LIVE = Path("metrics/train")
SWA_LIVE = Path("metrics/swa")
TRAIN_RESOURCES = Path("metrics/resources/train.json")
SWA_RESOURCES = Path("metrics/resources/swa.json")

TEST_METRICS = Path("metrics/test.json")
TEST_METRICS_KEYS = {"train": "trained_model", "swa": "swa_model"}
"""Each model's entry in TEST_METRICS, by MODELS name: not `train`, which dvclive's metrics/train/
uses for the training batches' scores, in the same `dvc exp show` table."""
EVAL_PLOTS = Path("metrics/eval")

EXPORT_DIR = Path("models/export")
EXPORT_WEIGHTS = EXPORT_DIR / "model.safetensors"
EXPORT_ONNX = EXPORT_DIR / "model.onnx"
EXPORT_CARD = EXPORT_DIR / "model_card.json"
EXPORT_LESSON_PTH = EXPORT_DIR / "model_weights.pth"  # the lesson's NeuralNetwork state_dict
EXPORT_LESSON_WEIGHTS = EXPORT_DIR / "model_weights.safetensors"  # the same tensors
CALIBRATION_METRICS = Path("metrics/calibration.json")
