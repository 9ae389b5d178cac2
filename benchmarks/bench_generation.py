"""Decode speed of guided generation against HF ``generate``, on a random model of a real shape.

Speed does not depend on the weights, so by default a randomly initialised Llama with the shape of
SmolLM2-135M (30 layers, width 576) is timed; ``--model DIR`` times a local Hugging Face model instead.

    .venv/bin/python benchmarks/bench_generation.py --batch 1 8 --tokens 32
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from svgt.backbone.adapter import default_layer
from svgt.backbone.runner import BlockRunner
from svgt.generation import guided_generate


def smollm2_shaped() -> torch.nn.Module:
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


class _Ids:
    """The few tokenizer attributes guided_generate uses, for prompts given as ids."""

    pad_token_id = 0
    eos_token_id = None

    @staticmethod
    def decode(ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local Hugging Face model directory (default: random SmolLM2 shape)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2, help="report the fastest of this many runs")
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval() if args.model else smollm2_shaped()
    runner = BlockRunner(model)
    d, layer = runner.hidden_size, default_layer(runner.num_layers)
    weight = torch.randn(d, args.k * d) / d**0.5

    def bridge(h: torch.Tensor) -> torch.Tensor:
        return (h @ weight).view(-1, args.k, d)

    def inject(h: torch.Tensor) -> torch.Tensor:
        return 0.1 * torch.tanh(h)

    for batch in args.batch:
        gen = torch.Generator().manual_seed(batch)
        prompts = [torch.randint(1, 1000, (args.prompt_len - i,), generator=gen).tolist() for i in range(batch)]
        common = dict(layer=layer, max_new_tokens=args.tokens, stop_token_ids=(), runner=runner)
        cases = {
            "ours, unguided": dict(),
            "ours, bridge exact r=5": dict(bridge_fn=bridge),
            "ours, bridge exact r=1": dict(bridge_fn=bridge, refresh_interval=1),
            "ours, bridge_only r=5": dict(bridge_fn=bridge, refresh_mode="bridge_only"),
            "ours, inject": dict(inject_fn=inject),
        }
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(p).flip(0) for p in prompts], batch_first=True).flip(1)
        mask = (ids != 0).long()
        hf_s = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens,
                           min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)
            hf_s.append(time.perf_counter() - start)
        print(f"batch {batch}: {'HF generate':24s} {batch * args.tokens / min(hf_s):8.1f} tok/s")
        for name, kwargs in cases.items():
            # best of N: the machine is shared, the minimum is the least disturbed run
            runs = [guided_generate(model, _Ids(), prompts, **common, **kwargs) for _ in range(args.repeats)]
            t = min((r.timing for r in runs), key=lambda timing: timing.total_s)
            print(f"batch {batch}: {name:24s} {t.tokens_per_s:8.1f} tok/s  (prefill {t.prefill_s:.2f} s, "
                  f"decode {t.decode_s:.2f} s, refreshes {t.refreshes})")


if __name__ == "__main__":
    main()
