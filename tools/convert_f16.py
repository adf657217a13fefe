"""Convert a BERT safetensors checkpoint to float16 (the bundled encoder in models/).

Usage: python tools/convert_f16.py SRC/model.safetensors DST/model.safetensors
Needs numpy and safetensors (pip install numpy safetensors). Integer tensors
(position_ids) are kept as they are; float tensors are rounded to IEEE f16.
"""
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def main(src: str, dst: str) -> None:
    tensors = load_file(src)
    out = {}
    for name in sorted(tensors):
        t = tensors[name]
        out[name] = t.astype(np.float16) if t.dtype.kind == "f" else t
    save_file(out, dst, metadata={"format": "pt", "converted_from": "float32"})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
