"""DVC stage `compile`: the HDKD student as ONNX / torch.export (/ AOTInductor / TensorRT) artifacts,
parity-checked against eager PyTorch on the validation split and timed."""

from hdkd.config import load_params
from hdkd.export import compile_stage
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: compile_stage(load_params()))
