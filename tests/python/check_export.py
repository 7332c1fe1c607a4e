"""Evaluates functions exported by `lpzero export --to python` on saved input lists.

Used by tests/export.rs. Usage: check_export.py PAIRS.json, where PAIRS.json is a list of
[inputs_file, module_file] pairs (inputs files as written by lpzero::export::inputs::write).
Prints one value per pair, in order, as Python's repr of a float (nan, inf and -inf included).
"""

import importlib.util
import json
import math
import sys

import torch

NAMES = ("act", "head", "softmax", "grad", "weight")


def load_inputs(path):
    """The five input lists of an lpzero inputs file, as lists of float32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"\n")
    header = json.loads(data[:end])
    if header["format"] != "lpzero-inputs" or header["byteorder"] != sys.byteorder:
        raise SystemExit(f"{path}: not a {sys.byteorder}-endian lpzero inputs file")
    payload = bytearray(data[end + 1:])
    flat = torch.frombuffer(payload, dtype=torch.float32) if payload else torch.zeros(0)
    lists = {}
    for name in NAMES:
        items = []
        for slot in header["lists"][name]:
            n = math.prod(slot["shape"])
            part = flat[slot["offset"]:slot["offset"] + n]
            items.append(part.reshape(slot["shape"]).clone())
        lists[name] = items
    return lists


def load_module(path):
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    with open(sys.argv[1]) as f:
        pairs = json.load(f)
    inputs, modules = {}, {}
    for inputs_path, module_path in pairs:
        if inputs_path not in inputs:
            inputs[inputs_path] = load_inputs(inputs_path)
        if module_path not in modules:
            modules[module_path] = load_module(module_path)
        value = modules[module_path].proxy(**inputs[inputs_path])
        print(repr(float(value)))


if __name__ == "__main__":
    main()
