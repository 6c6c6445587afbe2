"""Every knob and limit of the service, read from ``CNNVIS_*`` environment variables.

Defaults are chosen for one process on one machine; docs/operations.md lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNNVIS_", extra="ignore")

    # Where models live.
    store: Path = Field(Path("store"), description="Model store root folder.")
    read_only_store: bool = Field(False, description="Refuse registration and deletion.")

    # onnxruntime.
    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="Preferred onnxruntime providers, in order; unavailable ones are skipped.",
    )
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime's default.")
    inter_op_threads: int = Field(0, ge=0, description="0 = onnxruntime's default.")
    thread_spinning: bool = Field(
        False,
        description="Let onnxruntime's threads spin-wait after a run. Off: one request runs"
        " several sessions in turn (forward, companion, head), and a pool still spinning"
        " takes the cores the next session needs (docs/BENCHMARKS.md).",
    )
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    gpu_device_id: int = 0
    session_cache_size: int = Field(16, ge=1, description="onnxruntime sessions kept open.")

    # Batching and backpressure.
    max_batch_size: int = Field(
        8, ge=1, description="Rows merged into one onnxruntime run (1 = no batching)."
    )
    max_batch_delay_ms: float = Field(
        0.0, ge=0, description="Extra wait for company when the graph is idle."
    )
    max_queue: int = Field(32, ge=1, description="Requests admitted per model; then 503.")
    request_timeout_s: float = Field(60.0, gt=0, description="Per-request deadline; then 504.")
    worker_threads: int = Field(32, ge=1, description="Threads running model work.")

    # Limits on what a client may send.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Request body size.")
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1, description="One encoded image.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Width x height of one image.")
    max_images: int = Field(16, ge=1, description="Images per request.")
    max_model_bytes: int = Field(1024 * 1024 * 1024, ge=1, description="Uploaded model size.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k / number of targets.")
    max_cam_channels: int = Field(
        4096, ge=1, description="Score-CAM / Ablation-CAM: channels perturbed per image."
    )
    max_occlusion_windows: int = Field(
        4096, ge=1, description="Occlusion: window positions per image."
    )
    max_smoothgrad_samples: int = Field(200, ge=1, description="SmoothGrad: noisy copies.")
    max_ig_steps: int = Field(512, ge=2, description="Integrated gradients: path steps.")
    max_faithfulness_steps: int = Field(
        50, ge=1, description="Explain faithfulness: deletion/insertion steps."
    )

    # Probes: compare, invariance, adversarial (docs/probes.md).
    max_adversarial_epsilon: float = Field(
        32.0, ge=1, description="Adversarial: largest L-infinity budget, pixel levels (0..255)."
    )
    max_adversarial_steps: int = Field(100, ge=1, description="Adversarial: PGD steps.")
    max_adversarial_sweep: int = Field(
        8, ge=1, description="Adversarial: budgets tried in one sweep."
    )
    max_invariance_transforms: int = Field(
        16, ge=1, description="Invariance: transformations per request."
    )

    # Sampling: explanations of sampled /predict images (docs/monitoring.md).
    sampling: bool = Field(
        True, description="Explain /predict images as the cards' monitoring.sampling asks."
    )
    sampling_queue: int = Field(
        64, ge=1, description="Images waiting to be explained; then dropped."
    )
    sampling_queue_mib: int = Field(
        256, ge=1, description="Decoded pixels held by waiting images; then dropped."
    )
    sampling_max_age_s: float = Field(
        30.0, gt=0, description="A sample older than this is dropped as stale."
    )
    sampling_idle_only: bool = Field(
        True, description="Explain a sample only while its model has no request in progress."
    )
    sampling_budget: float = Field(
        0.02,
        gt=0,
        le=1,
        description="Largest share of the time the sampling thread spends explaining.",
    )
    sampling_nice: int = Field(
        10, ge=0, le=19, description="Linux: nice value of the sampling thread (0 = as the rest)."
    )
    sampling_seed: int | None = Field(
        None, description="Seed of the sampling draw (null = a different draw every start)."
    )

    # Jobs: feature visualisation, DeepDream and inversion (docs/featurevis.md).
    jobs_dir: Path | None = Field(
        None, description="Where job states and results live (default <store>/.jobs)."
    )
    max_running_jobs: int = Field(1, ge=1, description="Jobs optimising at once.")
    max_queued_jobs: int = Field(8, ge=0, description="Jobs waiting to run; then 503.")
    max_job_steps: int = Field(4096, ge=1, description="Steps of one job (all octaves).")
    max_job_size: int = Field(512, ge=8, description="Side of a job's image, pixels.")
    max_job_batch: int = Field(8, ge=1, description="Images optimised together in one job.")
    job_deadline_s: float = Field(
        900.0, gt=0, description="A job still running after this fails (deadline)."
    )
    job_retention_s: float = Field(
        86400.0, gt=0, description="How long finished jobs and their PNGs are kept."
    )

    # Security.
    admin_token: str | None = Field(None, description="Bearer token for model registration.")
    api_tokens: list[str] = Field(
        default_factory=list, description="Bearer tokens for explain endpoints (empty = open)."
    )

    # Operations.
    log_level: str = "info"
    log_format: Literal["json", "text"] = Field(
        "json", description="`cnnvis serve` logs: one JSON object per line, or plain text."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )

    # Monitoring: attribution drift against baselines (docs/monitoring.md).
    monitoring: bool = Field(
        True, description="Watch explanations: signal histograms, drift windows and gauges."
    )
    monitoring_grid: int = Field(
        7, ge=1, le=64, description="Drift: maps are pooled onto a grid of this many cells a side."
    )
    monitoring_window: int = Field(
        500, ge=1, le=100_000, description="Drift: the last explanations kept per class."
    )
    monitoring_queue: int = Field(
        1024, ge=1, description="Observations waiting for the monitor's thread; then dropped."
    )
