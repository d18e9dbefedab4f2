"""Helpers the golden scripts share: file digests and the --model / --out / --out-dir arguments."""
import hashlib
import os


def sha256_of(path):
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_model_and_output(ap, name):
    """Adds --model GGUF and one of --out FILE / --out-dir DIR (make.sh passes a folder) for output `name`."""
    ap.add_argument("--model", required=True, help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    dest = ap.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="output JSON file")
    dest.add_argument("--out-dir", help=f"output folder: writes {name} there (make.sh)")


def output_path(args, name):
    """The file the parsed --out / --out-dir arguments name (creating the folder)."""
    if args.out is not None:
        return args.out
    os.makedirs(args.out_dir, exist_ok=True)
    return os.path.join(args.out_dir, name)
