"""The training code as plain functions on a small random model: templates and label
masking, padding-free packing, exact resume, and the same losses over two processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from tunelab.params import Parameters
from tunelab.preferences import Preference
from tunelab.synthetic import preference_pairs, qa_pairs
from tunelab.training.basemodel import tiny_config, tiny_tokenizer
from tunelab.training.evaluate import preference_accuracy
from tunelab.training.objectives import DPO, encode_preferences
from tunelab.training.packing import pack
from tunelab.training.template import IGNORE, PromptTooLong, encode_pair
from tunelab.training.trainer import Stopped, Trainer, TrainingData

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_tokenizer(Path(os.environ["TUNELAB_MODEL_CACHE"]).parent)


def small_model(tokenizer: Any, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), tokenizer)
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 64, 128, 2
    config.num_attention_heads = config.num_key_value_heads = 2
    return LlamaForCausalLM(config)


def small_setup(
    data_dir: str,
    rank: int = 0,
    world: int = 1,
    zero_stage: int = 2,
    dpo: bool = False,
    **kw: Any,
) -> Trainer:
    tokenizer = tiny_tokenizer(Path(data_dir))
    params = Parameters.model_validate(
        {
            "peft": False,
            "batch_size": 8,
            "epochs": 2,
            "learning_rate": 1e-3,
            "seed": 3,
            "checkpoint_every": 3,
            "zero_stage": zero_stage,
            "finetune_type": "DPO" if dpo else "SFT",
        }
    )
    if dpo:
        data = TrainingData.from_preferences(tokenizer, _preferences(24, seed=9), 128)
    else:
        data = TrainingData.from_pairs(tokenizer, qa_pairs(24, seed=9), 128)
    return Trainer(
        small_model(tokenizer), params, data, torch.device("cpu"), rank=rank, world=world, **kw
    )


def test_only_the_answer_and_its_end_token_are_learned(tokenizer: Any) -> None:
    sample = encode_pair(tokenizer, "What is the code of Kalomi?", "It is 1234.", 128)
    learned = [
        t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE
    ]
    assert tokenizer.decode(learned) == "It is 1234.<|eos|>"
    prompt = tokenizer.decode(sample.input_ids[: len(sample.input_ids) - len(learned)])
    assert prompt == "<|user|>What is the code of Kalomi?<|eos|><|assistant|>"


def test_a_long_answer_is_cut_to_the_block_size_and_a_long_prompt_refused(
    tokenizer: Any,
) -> None:
    sample = encode_pair(tokenizer, "Q?", "word " * 100, 32)
    assert len(sample.input_ids) == 32 and sample.truncated
    with pytest.raises(PromptTooLong, match="prompt alone"):
        encode_pair(tokenizer, "word " * 100, "A.", 32)


def test_packed_samples_restart_positions_and_never_predict_across(tokenizer: Any) -> None:
    a = encode_pair(tokenizer, "Q one?", "A one.", 64)
    b = encode_pair(tokenizer, "Q two?", "A two.", 64)
    batch = pack([a, b])
    n = len(a.input_ids)
    assert batch.position_ids[0].tolist() == list(range(n)) + list(range(len(b.input_ids)))
    labels = batch.labels[0].tolist()
    assert labels[: n - 1] == a.labels[1:] and labels[n - 1] == IGNORE
    assert labels[-1] == IGNORE


def test_a_packed_sample_sees_nothing_of_the_sample_before_it(tokenizer: Any) -> None:
    model = small_model(tokenizer).eval()
    a = encode_pair(tokenizer, "What is the code of Kalomi?", "It is 1234.", 64)
    b = encode_pair(tokenizer, "Which room is Rate in?", "Room B12.", 64)
    batch = pack([a, b])
    with torch.no_grad():
        packed = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits[0, len(a.input_ids) :]
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)


class MemoryCheckpoints:
    """Serialised as the object-store checkpoints are: the live tensors keep training."""

    def __init__(self) -> None:
        self.saved: dict[int, bytes] = {}

    def save(self, step: int, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.saved[step] = buffer.getvalue()

    def latest(self) -> dict[str, Any] | None:
        if not self.saved:
            return None
        state: dict[str, Any] = torch.load(io.BytesIO(self.saved[max(self.saved)]))
        return state


def test_a_stopped_run_resumes_from_its_checkpoint_and_ends_like_an_unbroken_one(
    tokenizer: Any, tmp_path: Path
) -> None:
    data_dir = str(Path(os.environ["TUNELAB_MODEL_CACHE"]).parent)
    unbroken = small_setup(data_dir).run()
    checkpoints = MemoryCheckpoints()
    steps_seen: list[int] = []
    first = small_setup(
        data_dir,
        checkpoints=checkpoints,
        on_step=lambda p: steps_seen.append(p.step),
        should_stop=lambda: len(steps_seen) >= 4,
    )
    with pytest.raises(Stopped):
        first.run()
    assert max(checkpoints.saved) == 3
    resumed = small_setup(data_dir, checkpoints=checkpoints).run()
    assert resumed.resumed_from == 3
    assert [p.step for p in resumed.history] == list(range(1, unbroken.steps + 1))
    assert resumed.final_loss == pytest.approx(unbroken.final_loss, rel=1e-4)
    # The tokens each step trained on (a job's trained_tokens), those before the stop too.
    assert [p.tokens for p in resumed.history] == [p.tokens for p in unbroken.history]
    assert all(p.tokens > 0 for p in unbroken.history)


def _torchrun(processes: int, *args: str) -> dict[str, Any]:
    data_dir = str(Path(os.environ["TUNELAB_MODEL_CACHE"]).parent)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",  # as a module: a script in tests/ would shadow the stdlib's platform
            "tests.training_ddp",
            data_dir,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=840,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "TORCH_EXTENSIONS_DIR": str(Path(data_dir) / "torch_extensions"),
        },
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def one_process() -> dict[str, Any]:
    return _torchrun(1, "torch")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", ["torch", "deepspeed", "deepspeed-zero3"])
def test_two_processes_train_on_halves_of_each_batch_with_the_same_losses(
    engine: str, one_process: dict[str, Any]
) -> None:
    """torch DDP and DeepSpeed ZeRO-2/3 (on its CPU accelerator, with gloo) each match one
    process with the same global batch, step for step, and end with the same weights."""
    double = _torchrun(2, engine)
    assert len(double["losses"]) == 6
    assert double["losses"] == pytest.approx(one_process["losses"], rel=1e-3)
    assert double["ppl"] == pytest.approx(one_process["ppl"], rel=1e-3)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", ["torch", "deepspeed", "deepspeed-zero3"])
def test_two_processes_train_dpo_with_the_same_losses_and_rewards_as_one(engine: str) -> None:
    """DPO is distributed like SFT: the reference pass (split between the ranks; under
    ZeRO-3 in as many passes on each), the loss over all ranks' pairs and the rewards
    reduced over them match one process."""
    one, two = _torchrun(1, "torch-dpo"), _torchrun(2, f"{engine}-dpo")
    assert len(two["losses"]) == 6
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-3)
    assert two["margins"] == pytest.approx(one["margins"], rel=1e-3, abs=1e-5)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_two_processes_stopped_together_resume_from_their_checkpoint(
    engine: str, one_process: dict[str, Any], tmp_path: Path
) -> None:
    resumed = _torchrun(2, engine, str(tmp_path))
    assert resumed["losses"] == pytest.approx(one_process["losses"], rel=1e-3)
    assert resumed["ppl"] == pytest.approx(one_process["ppl"], rel=1e-3)


def watched_setup(tokenizer: Any, **overrides: Any) -> Trainer:
    """Full fine-tuning made to overfit: 16 facts, with 8 others held out."""
    params = Parameters.model_validate(
        {
            "peft": False,
            "batch_size": 8,
            "epochs": 40,
            "learning_rate": 3e-3,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "seed": 3,
            **overrides,
        }
    )
    train = TrainingData.from_pairs(tokenizer, qa_pairs(16, seed=9), 128)
    held_out = TrainingData.from_pairs(tokenizer, qa_pairs(8, seed=10), 128)
    return Trainer(
        small_model(tokenizer),
        params,
        train,
        torch.device("cpu"),
        validation=held_out.samples,
        best_checkpoints=MemoryCheckpoints(),
    )


def test_early_stopping_ends_an_overfitting_run_and_keeps_the_best_weights(
    tokenizer: Any,
) -> None:
    trainer = watched_setup(tokenizer, early_stopping_patience=2, select="best")
    result = trainer.run()
    measured = [(p.step, p.val_loss) for p in result.history if p.val_loss is not None]
    assert [step for step, _ in measured] == list(range(2, result.early_stopped_at + 1, 2))
    best_step, best_loss = min(measured, key=lambda m: m[1])
    assert result.early_stopped_at is not None and result.early_stopped_at < trainer.total_steps
    assert result.selected_step == result.selection.best_step == best_step
    # Patience 2: two measurements after the best, neither better, then the end.
    assert [step for step, _ in measured if step > best_step] == [best_step + 2, best_step + 4]
    # The weights the run ends with are the best step's: measured again, its loss.
    assert trainer.validation_loss() == pytest.approx(best_loss, rel=1e-4)


def test_select_last_keeps_the_last_weights_and_reports_the_best(tokenizer: Any) -> None:
    trainer = watched_setup(tokenizer, epochs=12, eval_every=3)
    result = trainer.run()
    measured = [(p.step, p.val_loss) for p in result.history if p.val_loss is not None]
    assert [step for step, _ in measured] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert result.early_stopped_at is None and result.selected_step == trainer.total_steps
    assert result.selection.best_val_loss == min(loss for _, loss in measured)
    assert trainer.validation_loss() == pytest.approx(measured[-1][1], rel=1e-4)


def test_a_lora_model_fine_tuned_again_on_a_second_dataset_answers_both(
    tmp_path: Path,
) -> None:
    """Continuing starts from the model's own adapter (it answers what it learned before
    a step is taken) and ends answering both sets. The second dataset rehearses the
    first, as one does against forgetting: on its own, a model this small forgets."""
    from tunelab.conversations import from_pair
    from tunelab.training.basemodel import ensure_tiny_base
    from tunelab.training.evaluate import evaluate
    from tunelab.training.model_io import load_model, load_tokenizer, save_model

    cache = Path(os.environ["TUNELAB_MODEL_CACHE"])
    base = ensure_tiny_base(cache, cache.parent)
    tokenizer = load_tokenizer(base)
    first = qa_pairs(8, seed=21, languages=("en",))
    second = qa_pairs(8, seed=22, languages=("en",))
    cpu = torch.device("cpu")

    def train(model: Any, pairs: list[tuple[str, str]], batch_size: int) -> Any:
        params = Parameters.model_validate(
            {
                "lora_rank": 16,
                # At 30 epochs and 3e-3 a third of the adapter inits tried learned under
                # half the facts; at 40 and 5e-3 every one learned them all.
                "epochs": 40,
                "batch_size": batch_size,
                "learning_rate": 5e-3,
                "seed": 1,
            }
        )
        Trainer(model, params, TrainingData.from_pairs(tokenizer, pairs, 128), cpu).run()
        return model

    def exact(model: Any, pairs: list[tuple[str, str]]) -> float:
        chats = [from_pair(q, a) for q, a in pairs]
        return float(evaluate(model, tokenizer, chats, "exact-match", 128)["exact_match"])

    params = Parameters(lora_rank=16)
    # The adapter's initial weights come from torch's generator: seeded, so that what it
    # learns does not depend on what the tests before this one drew.
    torch.manual_seed(1)
    trained = train(load_model(base, params, cpu), first, 8)
    learned = exact(trained, first)
    assert learned >= 0.5
    save_model(trained, tokenizer, tmp_path / "first")
    assert exact(load_model(base, params, cpu), first + second) == 0.0
    resumed = load_model(base, params, cpu, tmp_path / "first")
    assert exact(resumed, first) == learned  # the adapter it continues, before any step
    continued = train(resumed, second + first, 16)
    assert exact(continued, second) >= 0.75
    assert exact(continued, first) >= 0.75


# ---- DPO -------------------------------------------------------------------------------


def _preferences(count: int, seed: int) -> list[Preference]:
    return [
        Preference([{"role": "user", "content": q, "weight": None}], c, r)
        for q, c, r in preference_pairs(count, seed)
    ]


# TRL's own config sets arguments transformers has renamed.
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("loss", "beta", "sft_weight"),
    [("sigmoid", 0.1, 0.0), ("ipo", 0.5, 0.0), ("sigmoid", 0.2, 0.7)],
)
def test_the_dpo_loss_and_rewards_are_trls_on_the_same_batch(
    tokenizer: Any, tmp_path: Path, loss: str, beta: float, sft_weight: float
) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    reference = small_model(tokenizer, seed=1)
    model = small_model(tokenizer, seed=1)
    with torch.no_grad():  # a policy some way from its reference, so the ratios matter
        for weight in model.parameters():
            weight.add_(torch.randn_like(weight) * 0.02)
    pairs = _preferences(6, seed=4)
    if sft_weight:
        # TRL's SFT term averages over the batch's tokens, tunelab's over each pair's:
        # they agree when the chosen answers are equally long.
        pairs = [Preference(p.prompt, pairs[0].chosen, p.rejected) for p in pairs]
    config = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        loss_type=["sigmoid", "sft"] if sft_weight else [loss],
        loss_weights=[1.0, sft_weight] if sft_weight else None,
        report_to=[],
        use_cpu=True,
    )
    rows = [{"prompt": "x", "chosen": "y", "rejected": "z"}]
    trl = DPOTrainer(
        model=model,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    # Measured after TRL's set-up, which moves the model's float32 sums in their last
    # digits: before it, the two losses differ by 1e-4 of numerical noise alone.
    params = Parameters(
        finetune_type="DPO", dpo_loss=loss, dpo_beta=beta, dpo_sft_weight=sft_weight
    )
    objective = DPO(params)
    encoded = objective.with_reference(
        reference, reference, encode_preferences(tokenizer, pairs, 128, "turns"), 8
    )
    ours, stats = objective.loss(model, objective.pack(encoded))

    # The very tokens tunelab trains on, as TRL's collator lays them out: the chosen
    # rows, then the rejected ones, right-padded, the answers marked as completion.
    samples = [p.chosen for p in encoded] + [p.rejected for p in encoded]
    width = max(len(s.input_ids) for s in samples)
    pad = tokenizer.pad_token_id
    inputs = {
        "input_ids": torch.tensor(
            [s.input_ids + [pad] * (width - len(s.input_ids)) for s in samples]
        ),
        "attention_mask": torch.tensor(
            [[1] * len(s.input_ids) + [0] * (width - len(s.input_ids)) for s in samples]
        ),
        "completion_mask": torch.tensor(
            [[int(t != IGNORE) for t in s.labels] + [0] * (width - len(s.labels)) for s in samples]
        ),
    }
    model.train()
    theirs = trl._compute_loss(trl.model, inputs, False)
    torch.testing.assert_close(ours / len(pairs), theirs, atol=1e-5, rtol=1e-4)
    metrics = trl._metrics["train"]
    for ours_name, trl_name in [
        ("chosen",) * 2,
        ("rejected",) * 2,
        ("margins",) * 2,
        ("accuracy", "accuracies"),
    ]:
        assert float(stats[ours_name]) / len(pairs) == pytest.approx(
            metrics[f"rewards/{trl_name}"][-1], abs=1e-4
        ), ours_name


def dpo_setup(**kw: Any) -> tuple[Trainer, Any]:
    """LoRA DPO of the built-in base model, which answers in full sentences, towards
    terse answers (`Kalomi: 1234.`): before training it ranks every pair wrongly."""
    from tunelab.training.basemodel import ensure_tiny_base
    from tunelab.training.model_io import load_model, load_tokenizer

    cache = Path(os.environ["TUNELAB_MODEL_CACHE"])
    base = ensure_tiny_base(cache, cache.parent)
    params = Parameters.model_validate(
        {
            "finetune_type": "DPO",
            "batch_size": 8,
            "epochs": 5,
            # At 1e-3 held-out accuracy ended between 0.56 and 0.81 as the adapter's init
            # changed; at 2e-3 it was 1.0 for every init tried.
            "learning_rate": 2e-3,
            "lora_rank": 8,
            "checkpoint_every": 5,
            "seed": 3,
        }
    )
    tokenizer = load_tokenizer(base)
    cpu = torch.device("cpu")
    data = TrainingData.from_preferences(tokenizer, _preferences(48, seed=1), 128)
    torch.manual_seed(params.seed)  # the adapter's init, whatever the tests before drew
    return Trainer(load_model(base, params, cpu), params, data, cpu, **kw), tokenizer


def test_dpo_ranks_held_out_chosen_answers_above_rejected_ones() -> None:
    trainer, tokenizer = dpo_setup()
    held_out = _preferences(16, seed=2)
    before = preference_accuracy(trainer.model, tokenizer, held_out, 128)
    result = trainer.run()
    after = preference_accuracy(trainer.model, tokenizer, held_out, 128)
    assert after >= 0.9 > before + 0.3, (before, after)
    last = result.history[-1].rewards
    assert last is not None and last["accuracy"] == 1.0 and last["margins"] > 0
    assert last["chosen"] > last["rejected"]


def test_a_stopped_dpo_run_resumes_like_an_unbroken_one() -> None:
    unbroken = dpo_setup()[0].run()
    checkpoints = MemoryCheckpoints()
    steps: list[int] = []
    first, _ = dpo_setup(
        checkpoints=checkpoints,
        on_step=lambda p: steps.append(p.step),
        should_stop=lambda: len(steps) >= 7,
    )
    with pytest.raises(Stopped):
        first.run()
    resumed = dpo_setup(checkpoints=checkpoints)[0].run()
    assert resumed.resumed_from == 5
    assert resumed.final_loss == pytest.approx(unbroken.final_loss, rel=1e-4)
