"""Character-level text: a masked-diffusion DiT against a same-size autoregressive model trained for the same time,
judged by generative perplexity at the entropy each reaches. Run it alone on a quiet machine.

    python benchmarks/text_diffusion.py --seconds 600

The corpus is Python's help topics (``data.name=text``: ~420,000 characters in sequences of 64, whitespace folded;
the last tenth held out). Three models:

* ``masked``: the ``tiny`` DiT (6 blocks, width 128, patch 1: 64 tokens), ``objective.name=masked``, unconditional,
  trained for ``--seconds``; sampled with first-hitting (64 calls), the ancestral chain (128 steps) and MaskGIT
  (16 rounds), each at temperatures 1.0 and 0.9;
* ``autoregressive``: a causal transformer of the same depth and width (:class:`~maskdit.evaluate.charlm.CharLM`),
  trained for the same ``--seconds``; sampled at temperatures 1.0, 0.9 and 0.8;
* ``judge``: another causal transformer trained for ``--judge-seconds`` on the same training split.

Every sample set is scored by the judge's generative perplexity (lower: more like the corpus) and the unigram
entropy of its characters (a lower temperature lowers both: compare at equal entropy); the held-out text is scored
alike as the reference. Writes ``docs/discrete/text.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="training wall-clock of the two compared models")
    p.add_argument("--judge-seconds", type=float, default=None, help="the judge's training (default 2 x --seconds)")
    p.add_argument("--num", type=int, default=256, help="samples per arm")
    p.add_argument("--runs", default="/tmp/maskdit-text", help="scratch directory")
    p.add_argument("--ema", type=float, default=0.99, help="the masked model's EMA decay (its ~1,000 steps need a "
                   "short horizon; the autoregressive model samples its final weights)")
    p.add_argument("--embed-std", type=float, default=None, help="initialise the masked model's token embedding "
                   "with this standard deviation instead of 0.02")
    p.add_argument("--reuse", action="store_true", help="read back the autoregressive model and the judge of an "
                   "earlier run with the same budgets instead of training them again")
    p.add_argument("--out", default="docs/discrete/text.json")
    args = p.parse_args()
    from control_edges import write_result
    from discrete_digits import last_step, train

    from maskdit.data.text import load_text
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.charlm import generative_perplexity, train_charlm, unigram_entropy
    from maskdit.runs import load_run

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    if args.embed_std is not None:  # a study of the token embedding's initial scale (default: 0.02)
        import maskdit.model.discrete as discrete

        built = discrete.TokenEmbedding.__init__

        def scaled(self, *a, **k):
            built(self, *a, **k)
            torch.nn.init.normal_(self.weight, std=args.embed_std)

        discrete.TokenEmbedding.__init__ = scaled
    data, test = load_text(None, 64, "train"), load_text(None, 64, "test")
    vocab = data.codec.vocab_size
    result: dict = {"seconds": args.seconds, "vocab": vocab, "train_sequences": len(data), "rows": []}

    run_dir = train(root / "masked", args.seconds, "data.name=text", "model.conditional=false", "model.patch_size=1",
                    "objective.name=masked", "sample.guidance_scale=1", f"ema_decay={args.ema}", preset="digits")
    result["masked_steps"] = last_step(run_dir)

    def char_model(name: str, seconds: float, seed: int):
        """Train (or, with ``--reuse``, read back) an autoregressive model of ``seconds``."""
        from safetensors.torch import load_file, save_file

        from maskdit.evaluate.charlm import CharLM

        weights, facts_file = root / f"{name}.safetensors", root / f"{name}.json"
        if args.reuse and facts_file.exists() and json.loads(facts_file.read_text())["budget"] == seconds:
            model = CharLM(vocab, 64)
            model.load_state_dict(load_file(weights))
            return model.eval(), json.loads(facts_file.read_text())
        model, facts = train_charlm(data.ids, vocab, steps=10**9, seconds=seconds, seed=seed, progress=False)
        save_file(model.state_dict(), weights)
        facts_file.write_text(json.dumps({**facts, "budget": seconds}))
        return model, facts

    ar, ar_facts = char_model("autoregressive", args.seconds, 0)
    result["autoregressive_steps"] = ar_facts["steps"]
    judge, judge_facts = char_model("judge", args.judge_seconds or 2 * args.seconds, 1)
    result["judge_steps"] = judge_facts["steps"]
    result["judge_test_perplexity"] = generative_perplexity(judge, test.ids)

    def row(name: str, ids: torch.Tensor, seconds: float, **facts) -> None:
        texts = data.codec.decode(ids.float().reshape(len(ids), 1, -1))
        entry = {"arm": name, **facts, "gen_ppl": generative_perplexity(judge, ids.long().reshape(len(ids), -1)),
                 "entropy": unigram_entropy(texts), "seconds": round(seconds, 2), "example": texts[0]}
        print(json.dumps(entry), flush=True)
        result["rows"].append(entry)

    row("held-out text", test.ids[: args.num], 0.0)
    run = load_run(run_dir)
    for sampler, steps in (("first-hitting", 1), ("ancestral", 128), ("maskgit", 16)):
        for temperature in (1.0, 0.9):
            start = time.time()
            x = generate(run.model, run.objective, args.num, None, sampler=sampler, steps=steps, seed=0,
                         temperature=temperature, batch_size=64)
            row(f"masked {sampler}", x, time.time() - start, steps=steps, temperature=temperature)
    for temperature in (1.0, 0.9, 0.8):
        start = time.time()
        ids = torch.cat([ar.sample(64, temperature, seed=i) for i in range(args.num // 64)])
        row("autoregressive", ids, time.time() - start, temperature=temperature)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
