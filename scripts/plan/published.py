#!/usr/bin/env python3
"""kumiko plan against published GPU training runs (docs/plan.md).

Runs `kumiko plan --format json` for the configurations of Megatron-LM (Narayanan
et al. 2021, arXiv 2104.04473, Table 1), Korthikanti et al. 2022 (arXiv
2205.05198, Tables 3 and 5) and torchtitan (docs/performance.md and
benchmarks/llama3_h100_202412_torchtitan.md of pytorch/torchtitan), and prints a
markdown table of predicted against published tokens/s per GPU.
Usage: scripts/plan/published.py [KUMIKO_BINARY]
"""
import json
import subprocess
import sys

KUMIKO = sys.argv[1] if len(sys.argv) > 1 else "build/bin/kumiko"


def gpt(L, C, H, T=2048, V=51200):
    return [f"--model.arch=gpt2", f"--model.n_layers={L}", f"--model.d_model={C}", f"--model.n_heads={H}",
            f"--model.d_ff={4 * C}", f"--model.vocab_size={V}", f"--model.max_seq_len={T}", f"--data.seq_len={T}"]


def llama(L, C, H, KV, F, T=8192, V=128256):
    return [f"--model.arch=llama", f"--model.n_layers={L}", f"--model.d_model={C}", f"--model.n_heads={H}",
            f"--model.n_kv_heads={KV}", f"--model.d_ff={F}", f"--model.vocab_size={V}",
            "--model.tie_embeddings=false", f"--data.seq_len={T}", f"--model.max_seq_len={T}", "--model.rope_theta=500000"]


def layout(dp, tp, pp, gb, mb, recompute, sp=False, sched="1f1b", chunks=1, zero=0):
    return [f"--parallel.dp={dp}", f"--parallel.tp={tp}", f"--parallel.pp={pp}", f"--train.global_batch={gb}",
            f"--train.micro_batch={mb}", f"--train.recompute={recompute}",
            f"--parallel.sequence_parallel={'true' if sp else 'false'}", f"--parallel.pp_schedule={sched}",
            f"--parallel.pp_chunks={chunks}", f"--parallel.zero={zero}"]


# name, gpu, gpus per node, model + layout options, published tokens/s per GPU, source
RUNS = [
    ("Megatron GPT 1.7B, 32 A100", "a100", gpt(24, 2304, 24) + layout(32, 1, 1, 512, 4, "full"), 9288,
     "2104.04473 Tab. 1: 137 TFLOP/s, iteration 3.53 s"),
    ("Megatron GPT 18.4B, 256 A100", "a100", gpt(40, 6144, 48) + layout(32, 8, 1, 1024, 1, "full"), 872,
     "2104.04473 Tab. 1: 135 TFLOP/s, iteration 9.40 s"),
    ("Megatron GPT 145.6B, 1536 A100", "a100", gpt(80, 12288, 96) + layout(24, 8, 8, 2304, 1, "full",
                                                                           sched="interleaved", chunks=2), 124,
     "2104.04473 Tab. 1: 148 TFLOP/s, iteration 24.82 s"),
    ("Megatron GPT 310.1B, 1920 A100", "a100", gpt(96, 16384, 128) + layout(15, 8, 16, 2160, 1, "full"), 61,
     "2104.04473 Tab. 1: 155 TFLOP/s, iteration 37.61 s"),
    ("Korthikanti GPT 22B, 8 A100, full", "a100", gpt(48, 6144, 64) + layout(1, 8, 1, 4, 4, "full"),
     4 * 2048 / 1.42 / 8, "2205.05198 Tab. 5: iteration 1.42 s"),
    ("Korthikanti GPT 22B, 8 A100, selective + sp", "a100", gpt(48, 6144, 64) + layout(1, 8, 1, 4, 4, "selective",
                                                                                      sp=True),
     4 * 2048 / 1.10 / 8, "2205.05198 Tab. 5: iteration 1.10 s"),
    ("Korthikanti GPT 175B, 64 A100, full", "a100", gpt(96, 12288, 96) + layout(1, 8, 8, 64, 1, "full",
                                                                                sched="interleaved", chunks=3),
     64 * 2048 / 18.13 / 64, "2205.05198 Tab. 5: iteration 18.13 s"),
    ("Korthikanti GPT 175B, 64 A100, selective + sp", "a100",
     gpt(96, 12288, 96) + layout(1, 8, 8, 64, 1, "selective", sp=True, sched="interleaved", chunks=3),
     64 * 2048 / 13.75 / 64, "2205.05198 Tab. 5: iteration 13.75 s"),
    ("torchtitan Llama 3 8B, 64 A100 (FSDP)", "a100", llama(32, 4096, 32, 8, 14336) + layout(64, 1, 1, 64, 1,
                                                                                             "selective", zero=1),
     2904, "torchtitan docs/performance.md (2024)"),
    ("torchtitan Llama 3.1 8B, 8 H100 (FSDP, 500 W)", "h100", llama(32, 4096, 32, 8, 14336) +
     layout(8, 1, 1, 16, 2, "selective", zero=1), 5762, "torchtitan benchmarks/llama3_h100_202412 T1"),
]


def main():
    print("| run | layout | GPUs | published tokens/s/GPU | kumiko plan tokens/s/GPU | error | predicted MFU | "
          "peak GiB/GPU | source |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, gpu, opts, published, source in RUNS:
        cmd = [KUMIKO, "plan", "--gpu", gpu, "--format", "json", "--gpus-per-node", "8", "--data.synthetic=true",
               "--backend.dtype=bf16", "--train.warmup_steps=0", "--log.level=warn"] + opts
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            print(f"| {name} | failed: {p.stdout.strip()[-300:]} |")
            continue
        plan = json.loads(p.stdout)
        per_gpu = plan["time"]["tokens_per_s"] / plan["ranks"]
        peak = max(m["total"] for m in plan["memory"]) / 2**30
        print(f"| {name} | {plan['layout']} | {plan['ranks']} | {published:.0f} | {per_gpu:.0f} | "
              f"{100 * (per_gpu / published - 1):+.0f} % | {100 * plan['time']['mfu']:.1f} % | {peak:.1f} | {source} |")


if __name__ == "__main__":
    main()
