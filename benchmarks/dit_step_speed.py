"""The plain path: a DiT-S/2 training step in maskdit against diffusers' DiT and facebookresearch/DiT's own
``models.py``, same weights, side by side in one process.

    python benchmarks/dit_step_speed.py --dit-repo PATH/TO/DiT --rounds 5 --batch 8     # CPU, 4x32x32

facebookresearch/DiT is read from a local clone (``--dit-repo``; its ``models.py`` imports ``timm``, which needs
``pip install --no-deps timm``; where torchvision is missing, as with this project's torch, the one torchvision name
timm's layers import is stubbed for this process). Its DiT-S/2 is built with random weights, which load into
maskdit (``maskdit.interop``) and diffusers (``DiTTransformer2DModel``), so all compute the same function: the largest
output difference is printed. A training step is forward, backward (mean-square loss) and AdamW's step. maskdit
runs eager in fp32 (what the others run), with its blocks compiled (``torch.compile``), and with ``--bf16`` under bf16
autocast (where the CPU has bf16 instructions), beside the others under the same autocast. Rounds interleave every
variant; the figure is the median steps/s.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import types
from pathlib import Path

import torch

from maskdit.cli.args import Parser, guarded, positive_int


def load_reference(repo: Path):  # noqa: ANN201
    """facebookresearch/DiT's ``models`` module from a local clone (timm's torchvision import stubbed if need be)."""
    from maskdit.errors import ConfigError

    if not (repo / "models.py").is_file():
        raise ConfigError(f"--dit-repo {repo}: no models.py there (a clone of facebookresearch/DiT)")
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: DiT's layers use none of it, timm imports it anyway
        sys.meta_path.insert(0, _Stubs())
    sys.path.insert(0, str(repo))
    try:
        import models
    except ImportError as e:
        raise ConfigError(f"facebookresearch/DiT's models.py needs {e.name}: pip install --no-deps timm") from e
    return models


class _Anything(type):
    """A stub class whose every class attribute is a placeholder name (enum members, constants)."""

    def __getattr__(cls, attr: str) -> str:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return f"{cls.__name__}.{attr}"


class _Stubs:
    """An import hook that answers every ``torchvision`` module with a stub whose names are empty classes: what
    timm's imports need to succeed where torchvision cannot load (nothing here calls them)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        import importlib.machinery

        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        module = types.ModuleType(spec.name)
        module.__path__ = []
        def stub(attr: str) -> type:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Anything(attr, (torch.nn.Module,), {})

        module.__getattr__ = stub  # type: ignore[method-assign]
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        pass


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--dit-repo", type=Path, help="a local clone of facebookresearch/DiT (without: diffusers only)")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps per round")
    p.add_argument("--bf16", action="store_true", help="also maskdit under bf16 autocast")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled maskdit variant")
    args = p.parse_args(argv)
    from diffusers import DiTTransformer2DModel
    sys.path.insert(0, str(Path(__file__).parent))
    from diffusers_speed import steps_per_s

    from maskdit.errors import ConfigError
    from maskdit.interop.convert import import_run, load_model

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, 32, 32, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)
    k = torch.randint(0, 1000, (args.batch,), generator=g)
    calls: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.dit_repo is not None:
            reference = load_reference(args.dit_repo).DiT_S_2(input_size=32)
            with torch.no_grad():
                for prm in reference.parameters():
                    if prm.requires_grad:  # (not the fixed position table)
                        prm.add_(0.02 * torch.randn_like(prm))  # adaLN-Zero starts at zero: give the blocks work
            torch.save(reference.state_dict(), Path(tmp) / "dit.pt")
            import_run(Path(tmp) / "dit.pt", Path(tmp) / "run")
            calls["facebookresearch/DiT"] = (reference, lambda m: m(x, k, y))
        else:
            theirs = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4,
                                           out_channels=8, num_layers=12, sample_size=32, patch_size=2,
                                           num_embeds_ada_norm=1000)
            theirs.save_pretrained(Path(tmp) / "hf")
            import_run(Path(tmp) / "hf", Path(tmp) / "run")
        ours = load_model(Path(tmp) / "run")
        if args.dit_repo is not None:  # diffusers from maskdit's weights (its export), the same function
            from maskdit.interop.diffusers import export_diffusers

            try:
                export_diffusers(ours, Path(tmp) / "hf")
                theirs = DiTTransformer2DModel.from_pretrained(Path(tmp) / "hf")
            except ConfigError:  # DiT's own settings (its epsilon, its time frequencies) have no diffusers twin
                theirs = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4,
                                               out_channels=8, num_layers=12, sample_size=32, patch_size=2,
                                               num_embeds_ada_norm=1000)
        calls["diffusers"] = (theirs, lambda m: m(x, timestep=k, class_labels=y).sample)
        calls["maskdit"] = (ours, lambda m: m(x, k.double() / 1000, y))
        if not args.no_compile:
            compiled = load_model(Path(tmp) / "run")
            compiled.compile_blocks()
            calls["maskdit, compiled"] = (compiled, lambda m: m(x, k.double() / 1000, y))
        if args.bf16:
            def bf16(m):  # noqa: ANN001, ANN202
                with torch.autocast("cpu", torch.bfloat16):
                    return m(x, k.double() / 1000, y).float()
            calls["maskdit, bf16"] = (load_model(Path(tmp) / "run"), bf16)
            for name in ("facebookresearch/DiT", "diffusers"):  # the others under the same autocast
                if name in calls:
                    model, fn = calls[name]
                    twin = copy.deepcopy(model)

                    def autocast(m, fn=fn):  # noqa: ANN001, ANN202
                        with torch.autocast("cpu", torch.bfloat16):
                            return fn(m).float()
                    calls[f"{name}, bf16"] = (twin, autocast)
            if not args.no_compile:
                both = load_model(Path(tmp) / "run")
                both.compile_blocks()
                calls["maskdit, compiled + bf16"] = (both, bf16)
    with torch.no_grad():
        outs = {name: fn(model.eval()).float() for name, (model, fn) in calls.items()}
    first = outs["maskdit"]
    diffs = {name: (out - first).abs().max().item() for name, out in outs.items()}
    steps = {}
    for name, (model, fn) in calls.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, fn=fn, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            fn(model).square().mean().backward()
            optimizer.step()

        step(), step()  # warm-up (and compilation)
        steps[name] = step
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds):
        for name in (list(steps) if round_ % 2 == 0 else list(steps)[::-1]):
            rates[name].append(steps_per_s(steps[name], args.steps))
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"DiT-S/2, input 4x32x32 (256 tokens), batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} training steps (forward, backward, AdamW)\n")
    print("| model | steps/s (median) | vs diffusers | vs facebookresearch/DiT | max output difference |")
    print("|---|---|---|---|---|")
    base = med.get("facebookresearch/DiT")
    for name, rate in med.items():
        vs_ref = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {rate:.3f} | {rate / med['diffusers']:.2f}x | {vs_ref} | {diffs[name]:.1e} |")


if __name__ == "__main__":
    sys.exit(guarded(main))
