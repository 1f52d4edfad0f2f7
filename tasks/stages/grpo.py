"""The grpo stage: where the policy learns from its own multi-turn tool rollouts.

TRL's GRPOTrainer drives the optimisation; its `rollout_func` is the project's engine, so every
rollout is multi-turn with real tools and budgets. The policy being trained writes the rollouts
(transformers on CPU, TRL's colocated vLLM on GPU). Tool-result tokens get `env_mask` 0, so the loss
covers only what the policy wrote; EOS is appended where the trajectory ended (as in SFT).

Reward per trajectory (DESIGN.md §1): the format penalty (−1) if the format is invalid; otherwise
the outcome o; if o > 0, o + 0.2·RM(trajectory) clipped to [−3, 3]; final = max(o, that). Format,
outcome, RM score and bonus are logged each step. The RM is a scorer in a Ray actor or a `serve-rm`
URL; any RM failure stops training with its reason (a silent 0.0 would be read as a real score).

Checkpoints are written every `grpo.checkpoint_every` steps into a directory named by the stage's
config and inputs, so a retried stage resumes from the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.config import GrpoConfig, PipelineConfig
from tasks.core.errors import StageInputError
from tasks.core.hashing import stable_int
from tasks.core.models import ModelRef
from tasks.core.prompts import Prompts, encode_prompt
from tasks.core.stage import Input, Model, Option, StageContext, StageResult, StageSpec
from tasks.core.tir import TOOL_STOPS, format_problem
from tasks.generation.engine import EngineLimits, RolloutEngine, Trajectory
from tasks.generation.llm import SamplingParams, TransformersBackend, VLLMBackend, load_tokenizer
from tasks.generation.runner import ENGINE_CONFIG, settings_from_config
from tasks.generation.tools import ToolRunner, needs_search, open_tools
from tasks.scoring.verify import verify_answer
from tasks.serving.reward_model import ActorRewardModel, HttpRewardModel, RewardInput, RewardModelClient
from tasks.training.common import finish_training, hardware_args, output_dir, report_progress

log = logging.getLogger(__name__)
STAGE = "grpo"
ENDED = ("answer", "eos")  # finish reasons after which the policy would write EOS


def composite_reward(format_ok: bool, outcome: float, rm_score: float | None, config: GrpoConfig) -> float:
    """The paper's reward: format penalty, else max(o, clip(o + w·RM)) when o > 0, else o."""
    if not format_ok:
        return config.format_penalty
    if outcome <= 0 or rm_score is None:
        return outcome
    shaped = min(config.reward_clip, max(-config.reward_clip, outcome + config.rm_bonus_weight * rm_score))
    return max(outcome, shaped)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class GrpoReward:
    """TRL reward function: reads the rollout's text, verifies, scores with the RM, logs each part."""

    __name__ = "autotraj_reward"  # TRL names the reward's log entries after it

    def __init__(self, config: GrpoConfig, rm: RewardModelClient | None, correct_threshold: float):
        self.config = config
        self.rm = rm
        self.correct_threshold = correct_threshold

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[Any],
        answers: Sequence[list[str]],
        task: Sequence[str],
        response: Sequence[str],
        rm_ids: Sequence[list[int]],
        tools: Sequence[list[str]] = (),
        log_metric: Any = None,
        **_: Any,
    ) -> list[float]:
        """One reward per rollout; raises RewardModelError when the RM cannot score."""
        formats = [format_problem(text) is None for text in response]
        outcomes = [
            verify_answer(text, golds, kind, self.correct_threshold).outcome
            for text, golds, kind in zip(response, answers, task, strict=True)
        ]
        rm_scores: list[float | None] = [None] * len(response)
        wanted = [i for i, (ok, outcome) in enumerate(zip(formats, outcomes, strict=True)) if ok and outcome > 0]
        if self.rm is not None and wanted:
            items = [RewardInput(list(rm_ids[i]), prompts[i], response[i]) for i in wanted]
            for index, value in zip(wanted, self.rm.score(items), strict=True):
                rm_scores[index] = value
        rewards = [
            composite_reward(ok, outcome, score, self.config)
            for ok, outcome, score in zip(formats, outcomes, rm_scores, strict=True)
        ]
        if log_metric is not None:
            scored = [score for score in rm_scores if score is not None]
            log_metric("reward_parts/format_valid", _mean([float(ok) for ok in formats]))
            log_metric("reward_parts/outcome", _mean(outcomes))
            log_metric("reward_parts/rm_scored", float(len(scored)))
            if scored:
                log_metric("reward_parts/rm_score", _mean(scored))
            bonus = [reward - outcome for reward, outcome, ok in zip(rewards, outcomes, formats, strict=True) if ok]
            log_metric("reward_parts/rm_bonus", _mean(bonus) if bonus else 0.0)
            for tool in TOOL_STOPS.values():  # the calls each rollout made, per tool: GRPO's rollouts are not stored
                log_metric(f"rollout/{tool}_calls", _mean([float(called.count(tool)) for called in tools]))
        return rewards


class GrpoRollouts:
    """TRL rollout_func: multi-turn trajectories from the policy being trained, with real tools."""

    def __init__(self, tokenizer: Any, runner: ToolRunner, limits: EngineLimits, system: str, config: GrpoConfig):
        self.tokenizer = tokenizer
        self.runner = runner
        self.limits = limits
        self.system = system
        self.config = config
        self.last: list[Trajectory] = []  # the latest batch, for inspection

    def _policy(self, trainer: Any) -> contextlib.AbstractContextManager:
        """The model to generate with: TRL's colocated vLLM (GPU, UNTESTED here) or the unwrapped policy."""
        if getattr(trainer, "use_vllm", False):
            return contextlib.nullcontext(VLLMBackend.wrap(trainer.vllm_generation.llm, self.tokenizer, "policy"))
        from trl.models import unwrap_model_for_generation

        @contextlib.contextmanager
        def unwrapped() -> Any:
            # Entered once per rollout, not per turn: under ZeRO-3, ranks with different turn counts
            # would deadlock on per-turn parameter gathers.
            with unwrap_model_for_generation(
                trainer.model_wrapped, trainer.accelerator, trainer.args.ds3_gather_for_generation
            ) as model:
                was_training = model.training
                model.eval()
                try:
                    yield TransformersBackend.wrap(model, self.tokenizer, "policy")
                finally:
                    model.train(was_training)

        return unwrapped()

    def __call__(self, prompts: Sequence[str], trainer: Any) -> dict[str, list]:
        """Prompt ids, completion ids, env_mask and the trajectories' text for TRL and the reward."""
        trajectories = []
        step = trainer.state.global_step  # a resumed run samples as the first did
        for index, user in enumerate(prompts):
            text, ids = encode_prompt(self.tokenizer, self.system, user)
            seed = stable_int(self.config.seed, step, index)
            trajectories.append(Trajectory(f"p{index}", index, text, ids, seed=seed))
        params = SamplingParams(
            max_new_tokens=self.limits.max_new_tokens_per_turn,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
        )
        with self._policy(trainer) as backend:
            RolloutEngine(backend, self.runner, self.limits).run(trajectories, params)
        self.last = trajectories
        eos = self.tokenizer.eos_token_id
        completion_ids, env_mask = [], []
        for trajectory in trajectories:
            ids, mask = trajectory.completion_ids, trajectory.completion_mask
            if trajectory.finish_reason in ENDED or not ids:
                ids, mask = [*ids, eos], [*mask, 1]
            completion_ids.append(ids)
            env_mask.append(mask)
        return {
            "prompt_ids": [t.prompt_ids for t in trajectories],
            "completion_ids": completion_ids,
            "logprobs": None,  # TRL recomputes them with the policy
            "env_mask": env_mask,
            "response": [t.response for t in trajectories],
            "rm_ids": [t.prompt_ids + ids for t, ids in zip(trajectories, completion_ids, strict=True)],
            "tools": [[segment.tool for segment in t.segments if segment.kind == "tool"] for t in trajectories],
        }


def last_checkpoint(directory: Path) -> Path | None:
    """The newest complete Trainer checkpoint (one with trainer_state.json, written last)."""
    complete = [path for path in directory.glob("checkpoint-*") if (path / "trainer_state.json").exists()]
    return max(complete, key=lambda path: int(path.name.split("-")[-1]), default=None)


def grpo_dataset(queries: Sequence[dict[str, Any]], prompts: Prompts) -> Any:
    """The trainer's dataset: the user message as `prompt`, plus what the reward needs (answers, task)."""
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": prompts.user(q["question"]), **{k: q[k] for k in ("query_id", "answers", "task")}} for q in queries]
    )


def grpo_trainer(
    config: PipelineConfig,
    policy_path: str,
    dataset: Any,
    tokenizer: Any,
    rm: RewardModelClient | None,
    runner: ToolRunner,
    output_dir: Path,
    steps: int,
) -> Any:
    """TRL's GRPOTrainer with the engine as rollout_func and the paper's reward."""
    from trl import GRPOConfig, GRPOTrainer

    section = config.grpo
    settings = settings_from_config(config, deadline=False, cache=False)
    args = GRPOConfig(
        output_dir=str(output_dir),
        num_generations=section.num_generations,
        per_device_train_batch_size=section.prompts_per_step * section.num_generations,
        learning_rate=section.learning_rate,
        beta=section.beta,
        loss_type=section.loss_type,
        temperature=section.temperature,  # TRL scales logits by it; must match the sampling
        top_p=section.top_p,
        max_steps=steps,
        save_strategy="steps",
        save_steps=section.checkpoint_every,
        save_total_limit=2,  # the last two checkpoints are enough to resume
        logging_steps=1,
        report_to=["tensorboard"],
        seed=section.seed,
        max_completion_length=settings.limits.max_total_tokens + 1,
        use_vllm=section.use_vllm,
        vllm_mode="colocate",
        disable_tqdm=True,
        **hardware_args(config),
    )
    rollouts = GrpoRollouts(tokenizer, runner, settings.limits, settings.prompts.system, section)
    return GRPOTrainer(
        model=policy_path,
        reward_funcs=[GrpoReward(section, rm, config.score.correct_threshold)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollouts,
    )


def reward_model_client(model: ModelRef | None, system: str, ray_address: str | None) -> RewardModelClient | None:
    """An HTTP client for a serve-rm endpoint, a Ray actor for a local model, None for no RM."""
    if model is None:
        return None
    if model.kind == "endpoint":
        return HttpRewardModel(model.url or model.reference)
    if not model.local:
        raise ValueError(f"reward model {model.reference!r}: a served chat model cannot score; use serve-rm's URL")
    return ActorRewardModel(model.path or "", system, ray_address)


def run(context: StageContext) -> StageResult:
    """Train the policy with GRPO on a queries version; register it as `models/<name>`."""
    config = context.config
    queries_info = context.inputs["queries"]
    policy = context.models["policy"]
    settings = settings_from_config(config, deadline=False, cache=False)
    steps = context.options["max_steps"]
    rows = context.lake.read(queries_info, columns=["query_id", "question", "answers", "task"]).to_pylist()
    if not rows:
        raise StageInputError(f"{queries_info.version_id} has no queries to train on")
    dataset = grpo_dataset(rows, settings.prompts)
    model_id, out_dir = output_dir(context, "grpo", "grpo")
    rm = reward_model_client(context.models["reward_model"], settings.prompts.system, config.runtime.ray_address)
    tokenizer = load_tokenizer(policy.path)
    tools = open_tools(config, search_required=needs_search(r["task"] for r in rows))
    try:
        if rm is not None:
            rm.check()  # an unhealthy RM fails the stage before any training
        trainer = grpo_trainer(config, policy.path, dataset, tokenizer, rm, tools, out_dir / "checkpoints", steps)
        report_progress(trainer, context.progress, ["reward", "reward_parts/outcome", "reward_parts/rm_bonus", "kl"])
        resume = last_checkpoint(out_dir / "checkpoints")
        if resume is not None:
            log.info("resuming GRPO from %s", resume)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        tools.close()
        if rm is not None:
            rm.close()
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    metrics = {
        "steps": trainer.state.global_step,
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else 0,
        "first_reward": logged[0]["reward"] if logged else None,
        "final_reward": logged[-1]["reward"] if logged else None,
        "first_outcome": logged[0].get("reward_parts/outcome") if logged else None,
        "final_outcome": logged[-1].get("reward_parts/outcome") if logged else None,
        "queries": len(rows),
        "reward_model": rm.name if rm is not None else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
    }
    registration = {"model_id": model_id, "kind": "policy", "path": str(out_dir / "model"),
                    "base_model": policy.path, "method": "grpo"}  # fmt: skip
    return finish_training(context, trainer, trainer.model, tokenizer, registration, metrics)


SPEC = StageSpec(
    name="grpo",
    kind="train",
    description="GRPO from the SFT policy with multi-turn tool rollouts and the format/outcome/RM reward; resumable.",
    reads=("queries", "models"),
    writes=("models", "train_metrics", "stage_reports"),
    config=("grpo", *ENGINE_CONFIG, "tools", "score.correct_threshold"),
    files=("rollout.system_prompt_file", "rollout.user_template_file"),
    inputs=(Input("queries", "queries", "Training queries (name, name@N, queries/name@N).", short="-q"),),
    models=(
        Model("policy", "Policy to start from (a model reference) [default: grpo.policy_model].",
              config="grpo.policy_model", local=True),
        Model("reward_model", "Reward model: a model reference or a serve-rm URL [default: grpo.reward_model].",
              config="grpo.reward_model", optional=True, endpoint_ok=True),
    ),
    options=(Option("max_steps", int, "Optimizer steps [default: grpo.max_steps].", config="grpo.max_steps"),),
    run=run,
    default_name="{input}-grpo",
)  # fmt: skip
