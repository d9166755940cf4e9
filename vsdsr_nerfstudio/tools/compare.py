"""``vsdsr-compare``: train methods and baselines on one LLFF scene under the x4 protocol and score them side by side.

Example (the tiny CPU preset; see docs/compare.md for GPU presets and your own scene)::

    vsdsr-compare --data data/nerf_llff_data/fern --output outputs/compare-fern \\
        --methods vsd-sr-embedded "rsd=vsd-sr-embedded --pipeline.stage.guidance rsd"

Protocol (``llff-data``): train on the LR views (``images_{downscale-factor}``), hold out every ``llffhold``-th
view, render it at ``sr-scale`` x LR and score it against the real HR image. Every method is trained by ``ns-train``
in a subprocess (finished runs are reused on the next invocation), then loaded with nerfstudio's ``eval_setup`` and
scored here: PSNR, SSIM, LPIPS, NIQE and LR consistency per view; training wall time and peak GPU memory per run.

Baselines (each can be switched off): the bicubic oracle (bicubic x4 of the real held-out LR view); the first
method's backbone without SR for the same NeRF steps and for the same training time; "2D SR then NeRF" (every LR
training view upscaled once by the first method's prior, then the backbone trained on those without SR).

Outputs in ``--output``: ``results.json``, ``results.md``, ``crops.png``, ``renders/``, ``runs/``.
"""

from __future__ import annotations

import copy
import datetime
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from vsdsr_nerfstudio.tools.compare_runs import (
    CompareError,
    MethodSpec,
    RunPlan,
    RunResult,
    execute_run,
    load_run_config,
    parse_method_spec,
    parser_args,
    planned_config,
    read_methods_file,
    same_time_steps,
    train_args,
)
from vsdsr_nerfstudio.tools.compare_schedule import Job, Slot, run_jobs, slots_for, subprocess_env
from vsdsr_nerfstudio.tools.compare_sr2d import PRIOR_SCALE, SR2DSettings

ORACLE = "bicubic-oracle"
"""Name of the bicubic oracle's row and column."""


@dataclass
class CompareConfig:
    """Train and score methods and baselines on one LLFF scene (x4 NeRF super-resolution protocol)."""

    data: Path
    """LLFF scene folder (poses_bounds.npy + images*/), as for ``ns-train ... llff-data``."""
    methods: Tuple[str, ...] = ("vsd-sr-tiny",)
    """Methods to compare, each ``"[LABEL=]METHOD [--option value ...]"`` (an ns-train preset and trainer options,
    e.g. ``"rsd=vsd-sr-tiny --pipeline.stage.guidance rsd"``). The first is the reference of the trained
    baselines."""
    methods_file: Optional[Path] = None
    """A text file with more methods, one per line as in ``--methods`` (``#`` comments); appended to them."""
    output: Path = Path("outputs/compare")
    """Comparison folder: runs/, renders/, scores/, results.json, results.md, crops.png. Reused on the next run."""
    downscale_factor: int = 8
    """Train on ``images_{downscale_factor}/`` (``llff-data --downscale-factor``)."""
    sr_scale: int = 4
    """Render and score held-out views at this x the train resolution (``llff-data --sr-scale``)."""
    llffhold: int = 8
    """Hold out every llffhold-th view (``llff-data --llffhold``)."""
    common_args: str = ""
    """Extra ns-train trainer options for every run (quoted, e.g. ``"--machine.seed 1"``), before each method's."""
    bicubic: bool = True
    """Baseline: bicubic x sr_scale of the real LR held-out view (an oracle: it sees the test LR image)."""
    nosr_same_steps: bool = True
    """Baseline: the first method with ``--pipeline.sr-enabled False`` for the same NeRF steps."""
    nosr_same_time: bool = True
    """Baseline: the first method without SR for the same training time (steps derived from the measured time per
    step of the same-steps baseline, which is trained for that even when ``--no-nosr-same-steps``)."""
    sr2d: bool = True
    """Baseline "2D SR then NeRF": LR training views upscaled once by the first method's prior (DDIM), the backbone
    trained on them at HR without SR, for the first method's NeRF steps. Needs sr_scale 4."""
    sr2d_sampling: SR2DSettings = field(default_factory=SR2DSettings)
    """DDIM sampling of the 2D-SR baseline (as ``vsdsr-upscale``'s options)."""
    device: str = "auto"
    """Torch device of the 2D-SR prior sampling (``auto``: cuda if available). Renders use nerfstudio's choice."""
    lpips_weights: Optional[Path] = None
    """Local LPIPS-AlexNet weights (.npz, as ``--pipeline.model.lpips-weights``); None: torchvision's AlexNet,
    LPIPS reported as n/a if it cannot be loaded."""
    niqe_channel: Literal["y", "gray"] = "y"
    """Channel NIQE is computed on (as ``--pipeline.model.niqe-channel``)."""
    crops: int = 3
    """Rows of the crop grid (row r: held-out view r mod n, its most detailed window not used yet)."""
    crop_size: int = 128
    """Side of a crop in HR pixels (shown at 1:1); capped at the HR image's smaller side."""
    rescore: bool = False
    """Render and score every run again even when its scores are saved and its checkpoint has not changed."""
    gpus: Tuple[int, ...] = ()
    """GPUs to spread the runs over (CUDA indices, e.g. ``--gpus 0 1``): one run per GPU at a time, each ns-train
    seeing only its GPU; the same-time baseline waits for the runs it is timed on. Empty: one run at a time on
    nerfstudio's default device."""


def method_specs(cfg: CompareConfig) -> List[MethodSpec]:
    """The methods of ``--methods`` and ``--methods-file``, with unique names."""
    texts = list(cfg.methods) + (read_methods_file(cfg.methods_file) if cfg.methods_file is not None else [])
    if not texts:
        raise CompareError("No methods: give at least one with --methods (e.g. --methods vsd-sr-tiny).")
    specs = [parse_method_spec(text) for text in texts]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CompareError(f"Methods share the run name(s) {duplicates}: label them, e.g. 'a=vsd-sr-tiny ...'.")
    return specs


def _check_config(cfg: CompareConfig) -> None:
    if not (cfg.data / "poses_bounds.npy").is_file():
        raise CompareError(f"--data {cfg.data}: no poses_bounds.npy there; expected an LLFF scene folder.")
    if cfg.downscale_factor % cfg.sr_scale != 0:
        raise CompareError(
            f"--sr-scale {cfg.sr_scale} must divide --downscale-factor {cfg.downscale_factor} (real HR images)."
        )
    if cfg.crops < 1 or cfg.crop_size < 8:
        raise CompareError(f"--crops ({cfg.crops}) must be >= 1 and --crop-size ({cfg.crop_size}) >= 8.")
    if cfg.gpus:
        import torch

        count = torch.cuda.device_count()
        if len(set(cfg.gpus)) != len(cfg.gpus) or min(cfg.gpus) < 0 or max(cfg.gpus) >= count:
            raise CompareError(
                f"--gpus {' '.join(map(str, cfg.gpus))}: this machine has {count} CUDA device(s) (indices 0.."
                f"{count - 1}); name each at most once, or leave --gpus out to train one run at a time."
            )


class Comparison:
    """One comparison: plans and trains the runs, then scores them (see :func:`compare`)."""

    def __init__(self, cfg: CompareConfig, progress: Any) -> None:
        self.cfg = cfg
        self.data = cfg.data.resolve()
        self.output = cfg.output.resolve()
        self.runs_dir = self.output / "runs"
        self.progress = progress
        self.parser = parser_args(cfg.downscale_factor, cfg.sr_scale, cfg.llffhold)
        self.common = shlex.split(cfg.common_args)
        self.results: List[RunResult] = []

    def plan(
        self,
        name: str,
        kind: str,
        spec: MethodSpec,
        enforced: List[str],
        data: Optional[Path] = None,
        parser: Optional[List[str]] = None,
    ) -> RunPlan:
        """A run of ``spec``'s method and options, with the protocol (and baseline) options ``enforced``."""
        data = data or self.data
        protocol = ["--pipeline.datamanager.sr-scale", str(self.cfg.sr_scale)] if parser is None else []
        args = train_args(
            self.runs_dir, name, data, [*self.common, *spec.overrides], [*protocol, *enforced], parser or self.parser
        )
        return RunPlan(name=name, kind=kind, method=spec.method, data=data, args=args)  # type: ignore[arg-type]

    def run(self, plan: RunPlan, task: Any, slot: Slot) -> RunResult:
        """Train (or reuse) one run on ``slot`` and advance the progress bar."""
        self.progress.update(task, description=f"runs: {plan.name}")
        result = execute_run(self.runs_dir, plan, subprocess_env(slot), slot.describe() if self.cfg.gpus else "")
        self.progress.advance(task)
        return result

    def train_all(self, specs: List[MethodSpec]) -> None:
        """The methods and the trained baselines of the first one, on ``--gpus`` (see ``compare_schedule``).

        Priority (list order of the jobs): the reference method, the same-steps baseline, the same-time baseline
        (which waits for both), the other methods, the 2D-SR baseline. Table order: methods, then baselines."""
        cfg = self.cfg
        do_sr2d = cfg.sr2d and self._sr2d_possible()
        total = len(specs) + int(cfg.nosr_same_steps or cfg.nosr_same_time) + int(cfg.nosr_same_time) + int(do_sr2d)
        task = self.progress.add_task("runs", total=total)
        plans = [self.plan(spec.name, "method", spec, []) for spec in specs]
        ref_spec, ref_plan = specs[0], plans[0]
        ref_config = planned_config(ref_plan)
        steps = int(ref_config.max_num_iterations)
        no_sr = ["--pipeline.sr-enabled", "False"]

        def train(plan: RunPlan) -> Job[RunResult]:
            return Job(plan.name, lambda slot, _done: self.run(plan, task, slot))

        jobs: List[Job[RunResult]] = [train(ref_plan)]
        same_name = f"{ref_spec.name}-nosr-same-steps"
        if cfg.nosr_same_steps or cfg.nosr_same_time:
            jobs.append(train(self.plan(same_name, "nosr-steps", ref_spec, [*no_sr, *_iters(steps)])))
        if cfg.nosr_same_time:
            time_name = f"{ref_spec.name}-nosr-same-time"

            def same_time(slot: Slot, done: Dict[str, RunResult]) -> RunResult:
                time_steps = same_time_steps(done[same_name], done[ref_plan.name])
                CONSOLE.log(f"Same wall time as {ref_plan.name}: {time_steps} NeRF steps without SR.")
                plan = self.plan(time_name, "nosr-time", ref_spec, [*no_sr, *_iters(time_steps)])
                return self.run(plan, task, slot)

            jobs.append(Job(time_name, same_time, needs=(ref_plan.name, same_name)))
        jobs += [train(plan) for plan in plans[1:]]
        if do_sr2d:

            def sr2d(slot: Slot, _done: Dict[str, RunResult]) -> RunResult:
                scene = self._sr2d_scene(ref_config, slot)
                parser = parser_args(cfg.downscale_factor // cfg.sr_scale, 1, cfg.llffhold)
                enforced = [*no_sr, "--pipeline.datamanager.sr-scale", "1", *_iters(steps)]
                plan = self.plan(f"{ref_spec.name}-2dsr", "sr2d", ref_spec, enforced, scene, parser)
                return self.run(plan, task, slot)

            jobs.append(Job(f"{ref_spec.name}-2dsr", sr2d))
        results = run_jobs(jobs, slots_for(cfg.gpus))
        methods = [plan.name for plan in plans]
        self.results = [results[name] for name in methods]  # table order: the methods, then the baselines
        self.results += [results[job.name] for job in jobs if job.name not in methods]
        if not cfg.nosr_same_steps:
            self.results = [r for r in self.results if r.plan.kind != "nosr-steps"]

    def _sr2d_possible(self) -> bool:
        if self.cfg.sr_scale != PRIOR_SCALE:
            CONSOLE.log(f"[yellow]2D-SR baseline skipped: the priors upscale x{PRIOR_SCALE}, not x{self.cfg.sr_scale}.")
            return False
        return True

    def _sr2d_scene(self, ref_config: Any, slot: Slot) -> Path:
        from vsdsr_nerfstudio.tools.compare_score import load_held_out, train_views
        from vsdsr_nerfstudio.tools.compare_sr2d import build_sr2d_scene

        cfg = self.cfg
        pipeline = ref_config.pipeline
        prior = copy.deepcopy(pipeline.prior)
        prior.prompt = prior.scene_prompt(getattr(pipeline, "scene_prompt", None) or self.data.name)
        train = train_views(self.data, cfg.downscale_factor, cfg.llffhold)
        held = load_held_out(self.data, cfg.downscale_factor, cfg.sr_scale, cfg.llffhold)
        task = self.progress.add_task("2D SR of the training views", total=len(train))
        return build_sr2d_scene(
            self.output / "sr2d_scene",
            self.data,
            train,
            dict(zip(held.indices, held.hr_files, strict=True)),
            cfg.downscale_factor // cfg.sr_scale,
            prior,
            cfg.sr2d_sampling,
            slot.torch_device(cfg.device),
            on_view=lambda: self.progress.advance(task),
        )


def _iters(steps: int) -> List[str]:
    return ["--max-num-iterations", str(int(steps))]


def _environment() -> Dict[str, Any]:
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device, "commit": commit or None}


def _run_entry(result: RunResult, views: List[Dict[str, Any]]) -> Dict[str, Any]:
    from vsdsr_nerfstudio.tools.compare_score import mean_metrics

    steps = result.nerf_steps
    if steps is None:
        steps = int(load_run_config(result.run_dir).max_num_iterations)
    return {
        "name": result.plan.name,
        "kind": result.plan.kind,
        "method": result.plan.method,
        "command": shlex.join(["ns-train", *result.plan.command()[3:]]),
        "run_dir": str(result.run_dir),
        "nerf_steps": steps,
        "wall_s": round(result.wall_s, 3),
        "train_s": round(result.train_s, 3),
        "peak_gpu_gib": result.peak_gpu_gib,
        "mean": mean_metrics(views),
        "views": views,
    }


def score_all(cfg: CompareConfig, comparison: Comparison, held_out: Any) -> List[Dict[str, Any]]:
    """Entries of ``results.json``'s ``runs``: the bicubic oracle (when on), then every trained run."""
    from vsdsr_nerfstudio.tools.compare_score import (
        Scorer,
        bicubic_oracle,
        mean_metrics,
        save_oracle_renders,
        score_images,
        score_run,
    )

    progress, output = comparison.progress, comparison.output
    scorer = Scorer(cfg.sr_scale, cfg.lpips_weights, cfg.niqe_channel)
    n_views = len(held_out.indices)
    task = progress.add_task("scoring", total=n_views * (len(comparison.results) + int(cfg.bicubic)))
    entries = []
    if cfg.bicubic:
        progress.update(task, description=f"scoring: {ORACLE}")
        oracle = bicubic_oracle(held_out, cfg.sr_scale)
        save_oracle_renders(output, ORACLE, held_out, oracle)
        views = score_images(scorer, oracle, held_out, lambda: progress.advance(task))
        entries.append({"name": ORACLE, "kind": "oracle", "method": None, "command": None, "run_dir": None,
                        "nerf_steps": None, "wall_s": None, "train_s": None, "peak_gpu_gib": None,
                        "mean": mean_metrics(views), "views": views})  # fmt: skip
    for result in comparison.results:
        progress.update(task, description=f"scoring: {result.plan.name}")
        views = score_run(
            result.run_dir, result.plan.name, output, held_out, scorer, cfg.rescore, lambda: progress.advance(task)
        )
        entries.append(_run_entry(result, views))
    return entries


def write_outputs(cfg: CompareConfig, output: Path, held_out: Any, results: Dict[str, Any]) -> None:
    """results.json, results.md and crops.png in ``output``."""
    from vsdsr_nerfstudio.tools.compare_report import (
        choose_crops,
        column_label,
        crop_grid,
        markdown_table,
        write_json,
    )
    from vsdsr_nerfstudio.tools.compare_score import saved_renders

    write_json(output / "results.json", results)
    table = markdown_table(results["runs"])
    protocol = results["protocol"]
    header = (
        f"Scene `{protocol['data']}`, held-out views {protocol['held_out_views']} at x{protocol['sr_scale']} "
        f"({protocol['hr_size'][1]}x{protocol['hr_size'][0]}); {results['environment']['device']}, "
        f"{results['environment']['date']}, commit {results['environment']['commit']}.\n\n"
    )
    (output / "results.md").write_text(header + table)
    size = min(cfg.crop_size, *held_out.hr.shape[-2:])
    crops = choose_crops(held_out.hr, cfg.crops, size)
    columns = [("ground truth", held_out.hr)]  # then one column per results entry, in table order
    columns += [
        (column_label(entry["name"], entry["kind"]), saved_renders(output, entry["name"], held_out))
        for entry in results["runs"]
    ]
    names = [f"view {i}" for i in held_out.indices]
    crop_grid(columns, crops, size, names).save(output / "crops.png")
    CONSOLE.print(table)
    CONSOLE.log(f"Wrote {output / 'results.json'}, {output / 'results.md'} and {output / 'crops.png'}.")


def compare(cfg: CompareConfig) -> Dict[str, Any]:
    """Run the whole comparison and write its outputs; returns the content of ``results.json``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vsdsr_nerfstudio.tools.compare_score import load_held_out

    _check_config(cfg)
    specs = method_specs(cfg)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE) as progress:
        comparison = Comparison(cfg, progress)
        held_out = load_held_out(comparison.data, cfg.downscale_factor, cfg.sr_scale, cfg.llffhold)
        comparison.train_all(specs)
        entries = score_all(cfg, comparison, held_out)
    results = {
        "protocol": {
            "data": str(comparison.data),
            "downscale_factor": cfg.downscale_factor,
            "sr_scale": cfg.sr_scale,
            "llffhold": cfg.llffhold,
            "held_out_views": held_out.indices,
            "hr_size": list(held_out.hr.shape[-2:]),
            "lr_size": list(held_out.lr.shape[-2:]),
        },
        "environment": _environment(),
        "runs": entries,
    }
    write_outputs(cfg, comparison.output, held_out, results)
    return results


def main() -> None:
    """Console script ``vsdsr-compare``."""
    cfg = tyro.cli(CompareConfig, description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        compare(cfg)
    except CompareError as err:
        CONSOLE.print(f"[red]vsdsr-compare: {err}")
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
