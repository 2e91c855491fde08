"""Assemble the web page's mask-scaling kernel: src/evitsam/service/web/scale.wat -> scale.wasm (committed).

    pip install wasmtime && python scripts/build_scale_wasm.py

tests/test_web_scale.py checks that the committed scale.wasm is this assembly of scale.wat.
"""

from pathlib import Path

import wasmtime

WEB = Path(__file__).resolve().parents[1] / "src" / "evitsam" / "service" / "web"


def assemble() -> bytes:
    return bytes(wasmtime.wat2wasm((WEB / "scale.wat").read_text()))


if __name__ == "__main__":
    (WEB / "scale.wasm").write_bytes(assemble())
    print(f"wrote {WEB / 'scale.wasm'} ({len(assemble())} bytes)")
