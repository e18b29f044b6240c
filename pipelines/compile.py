"""DVC stage `compile`: the HDKD student as ONNX / torch.export (/ AOTInductor / TensorRT) artifacts,
parity-checked against eager PyTorch on the validation split and timed."""

from hdkd.stages import run

if __name__ == "__main__":
    run("compile")
