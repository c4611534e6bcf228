"""answer_select: one response per question (ScaleQuest step 7).

With `reward_model` set, a sequence-classification model scores every (question, response)
and the best one wins. Without it, majority vote over normalized final answers: the winner
is the most common answer (a tie goes to the answer given first and is flagged), and the
selected response is the first that gave it. A row whose responses carry no answer is
rejected (`no_answer`), one whose responses and answers differ in number
(`mismatched_responses`). Output keeps `parent_id`, so each pair traces to its seed request.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from gristmill.inference import ModelPath
from gristmill.scoring.math_answers import majority_vote, normalize_answer
from gristmill.stages.base import ColumnTypes, Rejections, Split
from gristmill.stages.question_columns import QuestionConfig, QuestionStage
from gristmill.stages.question_scorer_model import SequenceScorer, check_model_folder

LIST_TYPES = (pa.list_(pa.string()), pa.large_list(pa.string()))


class AnswerSelectConfig(QuestionConfig):
    reward_model: Annotated[str | None, ModelPath()] = Field(
        default=None, description="Sequence-classification reward model folder; None = vote")
    reward_batch_size: int = Field(default=8, ge=1)

    @field_validator("reward_model")
    @classmethod
    def _exists(cls, path: str | None) -> str | None:
        return None if path is None else check_model_folder(path, "reward_model")


class AnswerSelect(QuestionStage[AnswerSelectConfig]):
    name: ClassVar[str] = "answer_select"

    NEEDS: ClassVar[ColumnTypes] = {"responses": LIST_TYPES, "answers": LIST_TYPES}

    ADDED: ClassVar[list[pa.Field]] = [
        pa.field("response", pa.string()), pa.field("answer", pa.string()),
        pa.field("votes", pa.int32()), pa.field("answered", pa.int32()),
        pa.field("tie", pa.bool_()), pa.field("scores", pa.list_(pa.float32())),
        pa.field("selected_by", pa.string())]

    def setup(self) -> None:
        self.scorer = None
        if self.config.reward_model is not None:
            self.scorer = SequenceScorer(self.config.reward_model,
                                         batch_size=self.config.reward_batch_size).load()

    def process(self, batch: pa.Table) -> Split:
        questions = batch.column(self.config.question_column).to_pylist()
        responses = batch.column("responses").to_pylist()
        answers = batch.column("answers").to_pylist()
        n = batch.num_rows
        rejects = Rejections(n)
        values: dict[str, list] = {f.name: [None] * n for f in self.ADDED}
        for i in range(n):
            texts, finals = responses[i] or [], answers[i] or []
            if len(texts) != len(finals):
                rejects[i] = "mismatched_responses", (f"{len(texts)} responses but "
                                                      f"{len(finals)} answers")
                continue
            vote = majority_vote(finals)
            values["votes"][i], values["answered"][i] = vote.votes, vote.answered
            values["tie"][i] = vote.tie
            if vote.answer is None:
                rejects[i] = "no_answer", "no response has a final answer"
                continue
            if self.scorer is not None:
                scores = self.scorer.score([questions[i]] * len(texts), texts)
                best = max(range(len(texts)), key=lambda k: (scores[k], -k))
                values["scores"][i], values["selected_by"][i] = scores, "reward_model"
            else:
                best = next(k for k, a in enumerate(finals) if normalize_answer(a) == vote.answer)
                values["selected_by"][i] = "majority_vote"
            values["response"][i] = texts[best]
            values["answer"][i] = normalize_answer(finals[best])
        return rejects.split(self.with_added(batch, values), self.name)
