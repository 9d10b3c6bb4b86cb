"""The ``maskdit`` command line: parse one command's options and call its handler.

    maskdit train  [--preset NAME] [CONFIG.yaml] [key=value ...] [--resume]
    maskdit sample RUN_DIR --num N --out FILE.png|FILE.npz [--prompt TEXT ...] [sampling options]
    maskdit eval   RUN_DIR [--num N | --samples FILE.npz] [--data D] [--metrics fid,kid,...] [sampling options]
    maskdit report RUN_DIR [--out FILE.html]
    maskdit info   RUN_DIR
    maskdit bench  --preset NAME --input CxHxW --batch B
    maskdit invert RUN_DIR --images X.npz --out noise.npz   (then: sample RUN_DIR --from-noise noise.npz ...)
    maskdit prune  RUN_DIR --keep-blocks K --out NEW_RUN    (then: train init_from=NEW_RUN distill.teacher=RUN_DIR ...)
    maskdit lora merge RUN_DIR [--lora RUN[:SCALE] ...] --out NEW_RUN   (a LoRA run: train lora.rank=R init_from=BASE)

Each command is one module of :mod:`maskdit.cli` with its options beside its handler; :data:`COMMANDS` is the
one list of them. Errors a user can fix print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from maskdit.cli.args import Parser, UsageError, guarded, library_logs
from maskdit.registry import Registry

# Only the standard library and maskdit's leaves at import time: a command's module (and torch) loads inside
# main(), so Ctrl-C or SIGTERM during start-up ends with one line instead of a traceback, and --help answers at once.

#: command -> the module defining it (imported only when the command is parsed); the summary is its --help line.
#: The facts ``arguments`` and ``handler`` name its parser function and handler where a module holds two commands.
COMMANDS: Registry[str] = Registry("command")
COMMANDS.add("train", "maskdit.cli.train", "train a model; prints its run directory")
COMMANDS.add("sample", "maskdit.cli.sample", "write samples from a trained run")
COMMANDS.add("eval", "maskdit.cli.eval", "score samples: FID/KID, domain FID, precision/recall, class recognition")
COMMANDS.add("report", "maskdit.cli.report", "write one self-contained HTML report of a run")
COMMANDS.add("data", "maskdit.cli.data", "export clips of an embedded video dataset")
COMMANDS.add("info", "maskdit.cli.info", "describe what a run or checkpoint holds")
COMMANDS.add("bench", "maskdit.cli.bench", "forward+backward throughput of a model preset")
COMMANDS.add("latents", "maskdit.cli.latents", "encode images with a VAE into a latent store to train on")
COMMANDS.add("captions", "maskdit.cli.captions",
             "encode a dataset's captions with a frozen Hugging Face text encoder into a store to train on")
COMMANDS.add("encoder", "maskdit.cli.encoder",
             "train a small ViT by masked autoencoding, the target of representation alignment")
COMMANDS.add("autoencoder", "maskdit.cli.autoencoder",
             "train a small 1-D waveform autoencoder: audio as latent sequences to train on")
COMMANDS.add("tokenizer", "maskdit.cli.tokenizer",
             "train a small FSQ image tokenizer: images as token grids for masked diffusion")
COMMANDS.add("tokens", "maskdit.cli.tokenizer", "write a store of images' token ids through a trained tokenizer",
             arguments="add_tokens_arguments", handler="run_tokens")
COMMANDS.add("import", "maskdit.cli.interop", "turn a DiT, SiT or diffusers DiT checkpoint into a maskdit run",
             arguments="add_import_arguments", handler="run_import")
COMMANDS.add("export", "maskdit.cli.interop", "write a run's model as a diffusers DiTTransformer2DModel directory",
             arguments="add_export_arguments", handler="run_export")
COMMANDS.add("invert", "maskdit.cli.invert",
             "find the starting noise that samples into given images (DDIM / reverse-ODE inversion)")
COMMANDS.add("lora", "maskdit.cli.lora",
             "merge a LoRA run's updates (and other adapters of its base) into a plain run")
COMMANDS.add("prune", "maskdit.cli.prune",
             "keep K of a run's blocks (learned TinyFusion search or evenly spaced) as a new run to finetune")


def _part(command: str, fact: str, default: str) -> Callable:
    """The parser function (``fact="arguments"``) or handler (``"handler"``) of ``command``, looked up in its
    module when asked for."""
    entry = COMMANDS.entry(command)
    return getattr(importlib.import_module(entry.value), entry.facts.get(fact, default))


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (each is its own parser, so options and key=value may intermix)."""
    p = Parser(prog=f"maskdit {command}", description=COMMANDS.entry(command).summary)
    p.add_argument("--verbose", action="store_true", help="also show the libraries' own log lines and warnings")
    _part(command, "arguments", "add_arguments")(p)
    return p


def top_help() -> str:
    lines = ["usage: maskdit COMMAND [options]  (maskdit COMMAND --help for its options)", "",
             "Diffusion transformers with mask modeling.", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, summary in COMMANDS.describe()]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> int:
    if not argv:
        raise UsageError(f"maskdit: a command is required: one of {', '.join(COMMANDS)} (see maskdit --help)")
    if argv[0] in ("-h", "--help"):
        print(top_help())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"maskdit: unknown command {command!r}: choose one of {', '.join(COMMANDS)} "
                         "(see maskdit --help)")
    args = build_parser(command).parse_intermixed_args(rest)
    with library_logs(args.verbose):
        return _part(command, "handler", "run")(args)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (bad input, missing or damaged files, a full disk) print one
    line and return 2; signals return 128 + their number; a bug still shows its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return guarded(lambda: _dispatch(argv))


if __name__ == "__main__":
    sys.exit(main())
