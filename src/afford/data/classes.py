"""Built-in class lists, in index order (protocol.md §1.2, §1.3, §2).

The class index is the CAM channel index, so the order here is part of the checkpoint format.
"""

from __future__ import annotations

SEEN_AFFORDANCES: tuple[str, ...] = (
    "beat", "boxing", "brush_with", "carry", "catch", "cut", "cut_with", "drag", "drink_with",
    "eat", "hit", "hold", "jump", "kick", "lie_on", "lift", "look_out", "open", "pack", "peel",
    "pick_up", "pour", "push", "ride", "sip", "sit_on", "stick", "stir", "swing", "take_photo",
    "talk_on", "text_on", "throw", "type_on", "wash", "write",
)

SEEN_ONLY_AFFORDANCES: frozenset[str] = frozenset(
    {"beat", "boxing", "brush_with", "drag", "lift", "look_out", "pack", "stir", "talk_on", "text_on", "write"}
)

# Unseen: the Seen list minus the 11 Seen-only classes, re-numbered 0..24 (still alphabetical).
UNSEEN_AFFORDANCES: tuple[str, ...] = tuple(a for a in SEEN_AFFORDANCES if a not in SEEN_ONLY_AFFORDANCES)

HICO_IIF_AFFORDANCES: tuple[str, ...] = (
    "cut_with", "drink_with", "hold", "open", "pour", "sip", "stick", "stir", "swing", "type_on",
)

OBJECTS: tuple[str, ...] = (
    "apple", "axe", "badminton_racket", "banana", "baseball", "baseball_bat", "basketball", "bed",
    "bench", "bicycle", "binoculars", "book", "bottle", "bowl", "broccoli", "camera", "carrot",
    "cell_phone", "chair", "couch", "cup", "discus", "drum", "fork", "frisbee", "golf_clubs",
    "hammer", "hot_dog", "javelin", "keyboard", "knife", "laptop", "microwave", "motorcycle",
    "orange", "oven", "pen", "punching_bag", "refrigerator", "rugby_ball", "scissors",
    "skateboard", "skis", "snowboard", "soccer_ball", "suitcase", "surfboard", "tennis_racket",
    "toothbrush", "wine_glass",
)

UNSEEN_TEST_OBJECTS: tuple[str, ...] = (
    "axe", "banana", "basketball", "bed", "bicycle", "broccoli", "camera", "cup", "golf_clubs",
    "knife", "laptop", "refrigerator", "skis", "soccer_ball",
)
UNSEEN_TRAIN_OBJECTS: tuple[str, ...] = tuple(
    o for o in OBJECTS if o not in UNSEEN_TEST_OBJECTS and o not in ("binoculars", "drum", "pen")
)

# Split name -> built-in affordance list. HICO-IIF is accepted under both names used upstream.
BUILTIN_AFFORDANCES: dict[str, tuple[str, ...]] = {
    "Seen": SEEN_AFFORDANCES,
    "Unseen": UNSEEN_AFFORDANCES,
    "HICO-IIF": HICO_IIF_AFFORDANCES,
    "HICO": HICO_IIF_AFFORDANCES,
}

assert len(SEEN_AFFORDANCES) == 36 and len(UNSEEN_AFFORDANCES) == 25 and len(OBJECTS) == 50
assert len(UNSEEN_TRAIN_OBJECTS) == 33 and len(UNSEEN_TEST_OBJECTS) == 14
