"""Full-size SD1.5 and SDXL through clif-serve, as a user with their own checkpoint runs it (a benchmark).

For each model, one at a time, with random weights from the public configs and CLIP's real BPE
vocabulary (`full_size_folders.py`; nothing is downloaded):

  folder     build the diffusers folder (cached: built once)
  concepts   `clif-serve concepts new` twice (joe, a person; rex, a dog)
  generate   in-process `clif-serve generate "a photo of <joe> and <rex>"` at the recipe's smallest size, 2 steps
  refuse     the same request at 264x256 px, in process: refused naming `height` (the UNet needs multiples of 64 / 32)
  export     `clif-serve export --recipe export/sd15-512.toml` (sdxl-1024.toml): plain UNet and unet_lora
  repo       `clif-serve repo` (SDXL with --no-lora-adapters --no-regions: one 10 GB UNet session, not two)
  serve      `clif-serve serve`: time until every model is ready, RSS of tritonserver and of each stub
  hot-load   `clif-serve concepts add --url` for both packs
  served     the in-process request sent to the server: the image must equal the in-process one
  refused    the 264x256 request sent to the server: refused naming `height`
  latency    one UNet call at batch 2 at the recipe's smallest size (SD1.5 256 px, SDXL 512 px): onnxruntime
             against PyTorch eager (PyTorch alone when the model has no export in the work folder)
  train      SD1.5 only: one CLIF, one TI and one LoRA step at 256 px with --gradient-checkpointing and
             --mixed-precision bf16 (a view of the folder whose UNet `sample_size` is 32, weights hard-linked);
             the CLIF step's image encoder is a CLIP ViT-L/14 folder from its public config (random weights,
             `full_size_folders.clip_folder`): its text side is 768 wide like SD1.5's text encoder. SDXL
             would need a CLIP ViT-bigG/14 tower (projection 1280) for its second encoder as well.

`--steps` runs some step groups (concepts, generate, export, serve [repo, serve, hot-load, served,
refused], latency, train) and keeps the other steps' results; a group that needs an earlier one's
output (packs, export, in-process image) finds it in `--work` or fails naming the group to run.

Every step is its own `clif-serve` (or Python) process; each records wall time and the peak RSS of
its whole process tree (`full_size_measure.py`), and the load on the machine when it started (the
machine is shared: other processes, load average, free memory). JSON and markdown go to
`benchmarks/results/full_size.{json,md}`, written after every step.

    flock /tmp/clif-heavy.lock nice -n 5 python benchmarks/full_size.py --bpe-vocab bpe_simple_vocab_16e6.txt.gz

On a GPU machine (onnxruntime-gpu installed), the per-call UNet timing of an exported UNet runs as
`python benchmarks/full_size.py unet-latency --device cuda --model DIR --export EXPORT --size 1024 --json out.json`.

Needs about 14 GiB of memory for SD1.5 and 22 GiB for SDXL, 2 CPU cores, 4 GB (SD1.5) + 7 GB
(SDXL folder, fp16) + 7 GB (SD1.5 export) + 21 GB (SDXL export) of disk, and hours on 2 cores
(`--models sd15` runs one; `--models sd15 --steps train` only the training step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_folders import clip_folder  # noqa: E402
from full_size_measure import GIB, TreeSampler, run_measured, tree_rss  # noqa: E402

from clif_serve.bench.environment import describe_environment  # noqa: E402
from clif_serve.export.recipe import load_recipe  # noqa: E402
from clif_serve.paths import cache_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of <joe> and <rex>"
RECIPES = {"sd15": ROOT / "export" / "sd15-512.toml", "sdxl": ROOT / "export" / "sdxl-1024.toml"}
BAD_SIZE = ("264", "256")
CONCEPTS = (("joe", "person"), ("rex", "dog"))
STEP_GROUPS = ("concepts", "generate", "export", "serve", "latency", "train")
GROUP_RESULT = {"concepts": "concepts new joe", "generate": "generate", "export": "export", "serve": "served",
                "latency": "latency", "train": "train"}  # the step whose record says the group ran
# SDXL: serve `unet` only. With adapters or regions the repository also serves `unet_lora`, a second
# 10 GB onnxruntime UNet session that does not fit beside the first in 24 GiB (the packs carry no LoRA,
# the benchmark's requests no regions).
REPO_OPTIONS = {"sd15": (), "sdxl": ("--no-lora-adapters", "--no-regions")}


def clif_serve(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "clif-serve"), *args]


def disk_gib(path: Path) -> float:
    """Bytes on disk under `path` (hard links counted once)."""
    seen, total = set(), 0
    for file in path.rglob("*"):
        if file.is_file():
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return round(total / GIB, 2)


def machine_load() -> dict:
    """What else the shared machine was doing: load average, available memory, the largest other processes."""
    own = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    others = []
    for process in psutil.process_iter(["pid", "name", "memory_info", "cmdline"]):
        if process.info["pid"] in own or process.info["memory_info"] is None:
            continue
        command = " ".join(process.info["cmdline"] or [process.info["name"] or "?"])[:90]
        others.append((process.info["memory_info"].rss, command))
    others.sort(reverse=True)
    return {
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "available_gib": round(psutil.virtual_memory().available / GIB, 1),
        "largest_other_processes_gib": [[round(rss / GIB, 2), command] for rss, command in others[:4]],
    }


def image_diff(a: Path, b: Path) -> int:
    """Max absolute difference of two 8-bit images, in pixel levels."""
    left, right = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    return int(np.abs(left - right).max()) if left.shape == right.shape else -1


class Run:
    """The steps of one model; results are saved after each step."""

    def __init__(self, kind: str, work: Path, report: dict, save):
        self.kind, self.work, self.save = kind, work, save
        self.steps: dict = report["models"].setdefault(kind, {})
        self.env = dict(os.environ, CLIF_SERVE_CACHE=os.environ.get("CLIF_SERVE_CACHE", str(work / "cache")))

    def step(self, name: str, command: list[str], expect_ok: bool = True, **extra) -> dict:
        print(f"[{self.kind}] {name}: {' '.join(command)}", flush=True)
        load = machine_load()
        measured = run_measured(command, self.work / "logs" / f"{name}.log", env=self.env)
        record = {**measured.to_dict(), "machine_at_start": load, **extra}
        self.steps[name] = record
        self.save()
        if expect_ok and measured.returncode != 0:
            raise RuntimeError(f"{self.kind} {name} failed (exit {measured.returncode}): {measured.output_tail}")
        print(f"[{self.kind}] {name}: {measured.wall_s:.1f} s, peak {measured.peak_rss_gib:.2f} GiB", flush=True)
        return record

    def refusal(self, name: str, command: list[str]) -> None:
        """A request that must be refused with exit 2 and a one-line error naming `height`."""
        record = self.step(name, command, expect_ok=False)
        record["refused_naming_height"] = record["returncode"] == 2 and "height" in record["output_tail"]
        self.save()


def draw_photos(folder: Path, colour: tuple[int, int, int], count: int = 3, size: int = 320) -> Path:
    """A few synthetic photos of an object (round body, square head) for one training concept."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour))
    for index in range(count):
        image = Image.new("RGB", (size, size), (225, 225, 215))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(10, size // 4, 2))
        draw.ellipse((x, y + 50, x + size // 2, y + 50 + size // 2), fill=colour)
        draw.rectangle((x + 30, y, x + 90, y + 60), fill=(30, 30, 200))
        image.save(folder / f"{index}.png")
    return folder


def folder_at_256(folder: Path, view: Path) -> Path:
    """The same model with the UNet's `sample_size` 32 (256 px by default); weight files hard-linked."""
    if not (view / "model_index.json").is_file():
        shutil.copytree(folder, view, copy_function=os.link, dirs_exist_ok=True)
        config_file = view / "unet" / "config.json"
        config = json.loads(config_file.read_text())
        config_file.unlink()  # a hard link: write a new file, not into the original
        config_file.write_text(json.dumps({**config, "sample_size": 32}, indent=2))
    return view


def built_folder(kind: str, bpe_vocab: Path) -> Path:
    """The cached full-size folder of `kind`, built (on first use) in a child process: building holds GiBs of
    weights that this long-running parent would otherwise keep beside every later step's process."""
    child = [sys.executable, str(Path(__file__).with_name("full_size_folders.py")), kind, "--bpe-vocab", str(bpe_vocab)]
    built = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True)
    return Path(built.stdout.strip().splitlines()[-1])


def serve_steps(run: Run, repo: Path, packs: list[Path], request: list[str], in_process: Path) -> None:
    """Start the server, hot-load, one served request equal to the in-process image, one refusal; stop."""
    from clif_serve.serving.client import ClifClient
    from clif_serve.serving.launcher import Ports

    ports = Ports.free_on_loopback()
    url = f"127.0.0.1:{ports.grpc}"
    command = clif_serve(
        "serve", "--repo", str(repo), "--concept-store", str(run.work / "store"), "--address", "127.0.0.1",
        "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
        "--log", str(run.work / "logs" / "server.log"), "--ready-timeout", "1800",
    )
    print(f"[{run.kind}] serve: {' '.join(command)}", flush=True)
    load = machine_load()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=run.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    sampler = TreeSampler(process.pid)
    try:
        with ClifClient(url) as client:
            while not client.is_ready():
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited (code {process.returncode}); see {run.work / 'logs'}")
                time.sleep(1.0)
            ready_s = time.perf_counter() - started
        time.sleep(5.0)  # let the stubs settle
        run.steps["serve"] = {
            "ready_s": round(ready_s, 1),
            "rss_gib_after_ready": server_rss(process.pid),
            "machine_at_start": load,
        }
        run.save()
        for pack in packs:
            run.step(f"hot-load {pack.stem}", clif_serve("concepts", "add", str(pack), "--url", url))
        served = run.work / "served.png"
        run.step("served", clif_serve("generate", *request, "--url", url, "-o", str(served)))
        run.steps["served"]["max_pixel_diff_vs_in_process"] = image_diff(served, in_process)
        run.refusal("served refused 264x256", clif_serve("generate", *request[:3], "--height", BAD_SIZE[0],
                                                         "--width", BAD_SIZE[1], "--url", url, "-o", str(served)))
        run.steps["serve"]["peak_rss_gib_while_serving"] = round(sampler.peak / GIB, 2)
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
        sampler.stop()
        run.save()


def server_rss(pid: int) -> dict:
    """RSS in GiB of tritonserver and of each Python-backend stub (by model), and their total."""
    root = psutil.Process(pid)
    parts: dict[str, float] = {}
    for process in root.children(recursive=True):
        try:
            command = process.cmdline()
            rss = process.memory_info().rss / GIB
        except psutil.Error:
            continue
        if command and command[0].endswith("triton_python_backend_stub"):
            name = Path(command[1]).parent.parent.name if len(command) > 1 else "stub"
            key = f"stub {name}"
            parts[key] = round(parts.get(key, 0.0) + rss, 2)
        elif command and command[0].endswith("tritonserver"):
            parts["tritonserver"] = round(rss, 2)
    parts["total"] = round(tree_rss(root) / GIB, 2)
    return parts


def export_figures(export: Path) -> dict:
    """Disk size and each stage's parity figures from the export's manifest."""
    manifest = json.loads((export / "manifest.json").read_text())
    return {
        "disk_gib": disk_gib(export),
        "stages": {
            name: {
                "export_s": stage["export_seconds"],
                "reference_s": stage.get("reference_seconds"),
                "parity_s": stage["parity_seconds"],
                "max_abs_diff": stage["parity"]["max_abs_diff"],
                "max_rel_diff": stage["parity"]["max_rel_diff"],
                "tolerance": stage["parity"]["tolerance"],
            }
            for name, stage in manifest["stages"].items()
        },
    }


def require(path: Path, group: str) -> Path:
    """`path`, made by an earlier run's `group` step; a clear error when that step never ran."""
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run the {group!r} step first (--steps {group},...)")
    return path


def run_model(kind: str, args, report: dict, save) -> None:
    """The chosen step groups of one model; groups left out reuse what an earlier run left in the work folder."""
    work = args.work / kind
    work.mkdir(parents=True, exist_ok=True)
    run = Run(kind, work, report, save)
    groups = args.steps
    started = time.perf_counter()
    load = machine_load()
    folder = args.folders.get(kind) or built_folder(kind, args.bpe_vocab)
    run.steps["folder"] = {"path": str(folder), "wall_s": round(time.perf_counter() - started, 1),
                           "disk_gib": disk_gib(folder), "machine_at_start": load}
    save()
    packs = [work / "packs" / f"{name}.safetensors" for name, _ in CONCEPTS]
    if "concepts" in groups:
        for pack, (name, word) in zip(packs, CONCEPTS, strict=True):
            pack.unlink(missing_ok=True)
            run.step(f"concepts new {name}",
                     clif_serve("concepts", "new", name, "--model", str(folder), "--init-from", word, "-o", str(pack)))
    recipe_file = args.recipes.get(kind, RECIPES[kind])
    smallest = load_recipe(recipe_file).height.min  # 256 px for sd15-512, 512 px for sdxl-1024
    size = str(smallest)
    request = [PROMPT, "--steps", "2", "--seed", "0", "--height", size, "--width", size]
    in_process = work / "in_process.png"
    if "generate" in groups:
        concepts = [arg for pack in packs for arg in ("--concept", str(require(pack, "concepts")))]
        run.step("generate", clif_serve("generate", *request, "--model", str(folder), *concepts, "-o", str(in_process)))
        run.refusal("generate refused 264x256", clif_serve("generate", PROMPT, "--steps", "2", "--height", BAD_SIZE[0],
                                                           "--width", BAD_SIZE[1], "--model", str(folder), *concepts,
                                                           "-o", str(work / "bad.png")))
    export = work / "export"
    if "export" in groups:
        run.step("export", clif_serve("export", "--model", str(folder), "--out", str(export), "--recipe",
                                      str(recipe_file), "--overwrite"))
        run.steps["export"].update(export_figures(export))
        save()
    if "serve" in groups:
        repo = work / "repo"
        run.step("repo", clif_serve("repo", "--export", str(require(export / "manifest.json", "export").parent),
                                    "--out", str(repo), "--pipeline-instances", "1", "--force", *REPO_OPTIONS[kind]))
        for pack in packs:
            require(pack, "concepts")
        serve_steps(run, repo, packs, request, require(in_process, "generate"))
    if "latency" in groups:
        latency_steps(run, folder, export, smallest, args.latency_calls)
    if "train" in groups and kind == "sd15":
        view = folder_at_256(folder, work / "model-256")
        photos = work / "photos"
        run.step("train", clif_serve(
            "train", "--model", str(view), "--concept", f"joe={draw_photos(photos / 'joe', (200, 40, 40))}:person",
            "--common", f"person={draw_photos(photos / 'person', (90, 90, 90))}", "--steps", "clif=1,ti=1,lora=1",
            "--image-encoder", str(clip_folder()),
            "--batch-size", "1", "--gradient-checkpointing", "--mixed-precision", "bf16", "--out", str(work / "train"),
        ), resolution=256, image_encoder="CLIP ViT-L/14 (public config, random weights)")
        run.steps["train"].update(train_figures(work / "train"))
        save()


def train_figures(out: Path) -> dict:
    """Seconds per training stage (preparation included) and each stage's last logged loss."""
    summary = json.loads((out / "train_summary.json").read_text())
    losses = {}
    for line in (out / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        losses[entry["stage"]] = round(entry["loss"], 4)
    return {"stage_seconds": summary["seconds"], "losses": losses}


def latency_steps(run: Run, folder: Path, export: Path, size: int, calls: int) -> None:
    """One batch-2 UNet call, PyTorch eager against onnxruntime (PyTorch alone when there is no export)."""
    if not (export / "manifest.json").is_file():
        sides = ("torch",)
    else:
        sides = ("both",) if run.kind == "sd15" else ("torch", "ort")  # SDXL: one 10 GB UNet per process
    latency = [sys.executable, __file__, "unet-latency", "--model", str(folder), "--export", str(export),
               "--size", str(size), "--calls", str(calls)]
    for side in sides:
        out = run.work / f"latency-{side}.json"
        run.step(f"latency {side}", [*latency, "--side", side, "--json", str(out)])
        run.steps[f"latency {side}"]["ms"] = json.loads(out.read_text())
    timings = {k: v for side in sides for k, v in run.steps[f"latency {side}"]["ms"].items()}
    record = {"size": size, "batch": 2, **timings}
    if "ort_ms" in timings:
        record["pytorch_over_onnxruntime"] = round(timings["torch_ms"] / timings["ort_ms"], 2)
    else:
        record["not_run"] = "onnxruntime: no export of this model in the work folder"
    run.steps["latency"] = record
    run.save()


def unet_feed(folder: Path, size: int) -> dict:
    """Batch-2 UNet inputs at `size` px, shaped from the folder's unet/ and vae/ configs (no export needed)."""
    import torch

    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    latent = size // 2 ** (len(vae["block_out_channels"]) - 1)
    generator = torch.Generator().manual_seed(0)
    feed = {
        "sample": torch.randn(2, unet["in_channels"], latent, latent, generator=generator),
        "timestep": torch.full((2,), 500.0),
        "encoder_hidden_states": torch.randn(2, 77, unet["cross_attention_dim"], generator=generator),
    }
    if unet.get("addition_embed_type") == "text_time":  # SDXL: pooled text + 6 time ids, each embedded
        pooled = unet["projection_class_embeddings_input_dim"] - 6 * unet["addition_time_embed_dim"]
        feed["text_embeds"] = torch.randn(2, pooled, generator=generator)
        feed["time_ids"] = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
    return feed


def unet_latency(args) -> None:
    """Median ms of one batch-2 UNet call, PyTorch eager and/or onnxruntime, calls interleaved when both."""
    import statistics

    import onnxruntime as ort
    import torch

    from clif_serve.contract.folder import open_export
    from clif_serve.contract.ort_settings import OrtSettings

    feed = unet_feed(Path(args.model), args.size)
    sdxl = "time_ids" in feed
    calls = {}
    if args.side in ("both", "torch"):
        from diffusers import UNet2DConditionModel

        from clif_serve.models.loading import weight_variant

        unet_dir = Path(args.model) / "unet"
        unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, torch_dtype=torch.float32,
                                                    variant=weight_variant(unet_dir)).eval().to(args.device)
        inputs = {name: tensor.to(args.device) for name, tensor in feed.items()}
        added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if sdxl else None

        def torch_call():
            with torch.inference_mode():
                unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                     added_cond_kwargs=added, return_dict=False)
            if args.device == "cuda":
                torch.cuda.synchronize()

        calls["torch_ms"] = torch_call
    if args.side in ("both", "ort"):
        provider = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
        # The sessions' settings of clif-serve's executors and served stages (threads, spinning).
        options = OrtSettings().session_options()
        session = ort.InferenceSession(str(open_export(args.export).onnx_path("unet")), options, providers=[provider])
        if session.get_providers()[0] != provider:
            raise SystemExit(f"onnxruntime has no {provider} here (install onnxruntime-gpu on a CUDA machine)")
        arrays = {name: tensor.numpy() for name, tensor in feed.items()}
        calls["ort_ms"] = lambda: session.run(None, arrays)
    samples = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(args.calls):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1000)
    result = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    result["threads"] = {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    result["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    Path(args.json).write_text(json.dumps(result))
    print(result)


def markdown(report: dict) -> str:
    """The summary table of every model and step."""
    lines = [
        "# Full-size SD1.5 and SDXL on CPU",
        "",
        "Random weights from the public configs, CLIP's real BPE vocabulary; each step is one process; peak RSS is",
        "of its whole process tree (sampled every 0.25 s). `machine_at_start` in full_size.json lists what else ran.",
        "",
    ]
    for kind, steps in report["models"].items():
        env = report["environments"].get(kind, {})
        lines += [f"## {kind}", "", f"Measured on {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores).", ""]
        if steps:
            lines += ["| step | wall (s) | peak RSS (GiB) | notes |", "|---|---|---|---|"]
        for name, step in steps.items():
            lines.append(f"| {name} | {step.get('wall_s', step.get('ready_s', ''))} | {step.get('peak_rss_gib', '')} "
                         f"| {_notes(name, step)} |")
        missing = [group for group, step in GROUP_RESULT.items() if step not in steps and (group != "train" or kind == "sd15")]
        lines += ["", f"Not run for {kind}: {', '.join(missing)}." if missing else f"Every step ran for {kind}."]
        lines += [report.get("notes", {}).get(kind, ""), ""]
    return "\n".join(lines)


def _notes(name: str, step: dict) -> str:
    if "returncode" in step and step["returncode"] != 0 and "refused_naming_height" not in step:
        return f"FAILED (exit {step['returncode']}): {step['output_tail'].splitlines()[-1][:200] if step['output_tail'] else ''}"
    if name == "folder":
        return f"{step['disk_gib']} GB on disk"
    if "refused_naming_height" in step:
        return f"refused naming height: {step['refused_naming_height']}"
    if name == "export" and "stages" in step:
        parity = ", ".join(f"{s} {v['max_rel_diff']:.1e} (tol {v['tolerance']:.1e})" for s, v in step["stages"].items())
        return f"{step['disk_gib']} GB; max rel. parity diff: {parity}"
    if name == "train" and "stage_seconds" in step:
        return (f"{step['resolution']} px, seconds per stage {step['stage_seconds']}, loss {step['losses']} "
                "(CLIF at batch 1: InfoNCE over one pair is 0)")
    if name == "serve":
        return f"ready in {step['ready_s']} s; RSS after ready (GiB): {step['rss_gib_after_ready']}"
    if name == "served":
        return f"max pixel diff vs in-process: {step.get('max_pixel_diff_vs_in_process')}"
    if name == "latency" and "not_run" in step:
        return f"{step['size']} px batch 2: PyTorch {step['torch_ms']} ms; not run: {step['not_run']}"
    if name == "latency":
        return (f"{step['size']} px batch 2: PyTorch {step['torch_ms']} ms, ORT {step['ort_ms']} ms, "
                f"PyTorch / ORT {step['pytorch_over_onnxruntime']}")
    return ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    latency = sub.add_parser("unet-latency", help="(internal) time one UNet")
    latency.add_argument("--model", required=True)
    latency.add_argument("--export", help="the export whose unet stage onnxruntime runs (needed unless --side torch)")
    latency.add_argument("--size", type=int, required=True)
    latency.add_argument("--calls", type=int, default=3)
    latency.add_argument("--side", choices=("both", "torch", "ort"), default="both")
    latency.add_argument("--json", required=True)
    latency.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                         help="cuda: PyTorch on the GPU and onnxruntime's CUDAExecutionProvider (onnxruntime-gpu)")
    parser.add_argument("--bpe-vocab", type=Path, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--work", type=Path, default=cache_dir() / "benchmarks" / "full_size",
                        help="folder for exports, repositories, logs (default: under the clif-serve cache)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--latency-calls", type=int, default=3)
    parser.add_argument("--note", action="append", default=[], metavar="KIND=TEXT",
                        help="a note printed under the model's table (e.g. why some steps did not run)")
    parser.add_argument("--steps", default=",".join(STEP_GROUPS),
                        help=f"step groups to run, comma-separated, of {','.join(STEP_GROUPS)} (default: all); "
                             "the others' results stay in the report and their outputs in --work")
    parser.add_argument("--folder", action="append", default=[], metavar="KIND=DIR",
                        help="use this diffusers folder for sd15 or sdxl instead of building one (e.g. your checkpoint)")
    parser.add_argument("--recipe", action="append", default=[], metavar="KIND=FILE",
                        help="export recipe for sd15 or sdxl (default: export/sd15-512.toml, export/sdxl-1024.toml)")
    args = parser.parse_args(argv)
    args.folders = {kind: Path(folder) for kind, folder in (item.split("=", 1) for item in args.folder)}
    args.recipes = {kind: Path(recipe) for kind, recipe in (item.split("=", 1) for item in args.recipe)}
    args.steps = tuple(args.steps.split(","))
    if unknown := set(args.steps) - set(STEP_GROUPS):
        parser.error(f"--steps: unknown {', '.join(sorted(unknown))} (steps: {', '.join(STEP_GROUPS)})")
    if args.command == "unet-latency":
        unet_latency(args)
        return
    needs_vocab = any(kind not in args.folders for kind in args.models.split(","))
    if needs_vocab and (args.bpe_vocab is None or not args.bpe_vocab.is_file()):
        parser.error("--bpe-vocab: give the path of bpe_simple_vocab_16e6.txt.gz (from the open-clip-torch wheel)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "full_size.json"
    report = json.loads(results.read_text()) if results.is_file() else {"models": {}}
    # Each model's rows are from the machine of its last run (a report of one machine for all is migrated).
    environments = report.setdefault("environments", {})
    if "environment" in report:
        environments.update({kind: report["environment"] for kind in report["models"]} | environments)
        del report["environment"]
    report.setdefault("notes", {}).update(item.split("=", 1) for item in args.note)

    def save() -> None:
        results.write_text(json.dumps(report, indent=1))
        (args.out / "full_size.md").write_text(markdown(report))

    for kind in args.models.split(","):
        if set(args.steps) == set(STEP_GROUPS):
            report["models"][kind] = {}
        report["models"].setdefault(kind, {}).pop("error", None)
        environments[kind] = describe_environment()
        try:
            run_model(kind, args, report, save)
        except RuntimeError as exc:  # a failed step is recorded; the next model still runs
            report["models"][kind]["error"] = {"wall_s": "", "peak_rss_gib": "", "returncode": 1, "output_tail": str(exc)}
        save()


if __name__ == "__main__":
    main()
