r"""UnifiedReward judge questions, answers, and the parsers of its answers.

UnifiedReward (CodeGoat24/UnifiedReward-qwen-*) was trained to answer fixed question formats; the
two pointwise image formats used for text-to-image RL (as in the MixGRPO reference code) are:

- ``"semantic"``: word-wise scores plus ``Alignment Score (1-5): X``, ``Coherence Score (1-5): Y``,
  ``Style Score (1-5): Z``; the reward is the alignment score;
- ``"score"``: element-wise presence checks, then ``Final Score: X``; the reward is the final score.

The question wording is the model's input protocol and is kept verbatim.

Parsing is the reference's (MixGRPO ``UnifiedRewardModel.extract_alignment_score`` /
``extract_final_score``): ``re.search`` of ``Alignment Score \(1-5\):\s*([0-5](?:\.\d+)?)`` or
``Final Score:\s*([0-5](?:\.\d+)?)``, the first match, as a float. So the value is one digit 0-5
right after the label and any whitespace (newlines included), optionally ``.`` plus digits; what
follows is not looked at. Consequences, kept on purpose to score as the reference does:
``Final Score: 10`` reads 1.0, ``Final Score: 45`` reads 4.0, ``Final Score: 5.9`` reads 5.9
(values lie in ``[0, 6)``), ``Final Score: 3.`` reads 3.0; ``Final Score: 7``, ``Final Score: -1``,
``Final Score: **4**`` and ``**Final Score:** 4`` match nothing at that label (a later
well-formed occurrence still counts). No match: :func:`parse_score` returns ``None`` and the caller
reports a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEMANTIC_QUESTION = (
    "You are presented with a generated image and its associated text caption. Your task is to analyze the image "
    "across multiple dimensions in relation to the caption. Specifically:\n\n"
    "1. Evaluate each word in the caption based on how well it is visually represented in the image. Assign a "
    "numerical score to each word using the format:\n"
    '   Word-wise Scores: [["word1", score1], ["word2", score2], ..., ["wordN", scoreN], ["[No_mistakes]", scoreM]]\n'
    "   - A higher score indicates that the word is less well represented in the image.\n"
    "   - The special token [No_mistakes] represents whether all elements in the caption were correctly depicted. "
    "A high score suggests no mistakes; a low score suggests missing or incorrect elements.\n\n"
    "2. Provide overall assessments for the image along the following axes (each rated from 1 to 5):\n"
    "- Alignment Score: How well the image matches the caption in terms of content.\n"
    "- Coherence Score: How logically consistent the image is (absence of visual glitches, object distortions, "
    "etc.).\n"
    "- Style Score: How aesthetically appealing the image looks, regardless of caption accuracy.\n\n"
    "Output your evaluation using the format below:\n\n"
    "---\n\n"
    'Word-wise Scores: [["word1", score1], ..., ["[No_mistakes]", scoreM]]\n\n'
    "Alignment Score (1-5): X\n"
    "Coherence Score (1-5): Y\n"
    "Style Score (1-5): Z\n\n"
    "Your task is provided as follows:\nText Caption: [{prompt}]"
)

SCORE_QUESTION = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this "
    "image based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the "
    "accuracy of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, "
    "color accuracy, and overall aesthetic appeal.\n"
    "Extract key elements from the provided text caption, evaluate their presence in the generated image using "
    "the format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and "
    "assign a score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\nText Caption: [{prompt}]"
)

#: template name -> (question with a ``{prompt}`` slot, regex capturing the score): the reference's
TEMPLATES: dict[str, tuple[str, re.Pattern[str]]] = {
    "semantic": (SEMANTIC_QUESTION, re.compile(r"Alignment Score \(1-5\):\s*([0-5](?:\.\d+)?)")),
    "score": (SCORE_QUESTION, re.compile(r"Final Score:\s*([0-5](?:\.\d+)?)")),
}
#: bounds of a parsed score: one digit 0-5 plus optional decimals, so ``[0, 6)`` (nominally 1-5)
SCORE_MIN, SCORE_MAX = 0.0, 6.0


@dataclass(frozen=True)
class JudgeAnswer:
    """What a judge backend returned for one image: the answer text, or the error that prevented
    one (after ``attempts`` tries)."""

    text: str | None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


def check_template(template: str) -> str:
    """``template`` if it is a known template name, else ``ValueError``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown UnifiedReward template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    return template


def build_question(template: str, prompt: str) -> str:
    """The judge question for ``prompt`` in ``template`` format."""
    return TEMPLATES[check_template(template)][0].replace("{prompt}", prompt)


def parse_score(template: str, answer: str | None) -> float | None:
    """The score in the judge's ``answer`` as the reference parses it (first match of the
    template's pattern), or ``None`` when there is no match."""
    check_template(template)
    if not answer:
        return None
    match = TEMPLATES[template][1].search(answer)
    return None if match is None else float(match.group(1))
