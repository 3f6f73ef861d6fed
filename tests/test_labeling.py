import numpy as np
import pytest

from services.labeling import label_batch, task_label


def test_picks_argmax_and_flags_low_confidence():
    lab = task_label(np.array([0.2, 0.5, 0.3]), ["casual", "formal", "sports"], threshold=0.6)
    assert lab.label == "formal" and lab.confidence == pytest.approx(0.5) and lab.needs_review
    sure = task_label(np.array([0.05, 0.95]), ["men", "women"], threshold=0.8)
    assert sure.label == "women" and not sure.needs_review
    assert set(sure.probabilities) == {"men", "women"}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        task_label(np.array([0.5, 0.5]), ["a", "b", "c"], 0.5)


def test_batch():
    probs = {"gender": np.array([[0.9, 0.1], [0.3, 0.7]])}
    out = label_batch(probs, {"gender": ["men", "women"]}, {"gender": 0.8})
    assert [o["gender"].label for o in out] == ["men", "women"]
    assert [o["gender"].needs_review for o in out] == [False, True]


def test_batch_labels_are_the_hand_computed_ones():
    """Expected values worked out by hand (argmax, 6-decimal rounding, clipping, threshold),
    not by the code under test."""
    probs = {
        "style": np.array([[0.1, 0.7, 0.2], [0.3333333333, 0.3333333334, 0.3333333333], [0.05, 0.05, 0.9]], dtype=np.float32),
        "gender": np.array([[0.55, 0.45], [1.2, -0.2], [0.2, 0.8]]),
    }
    classes = {"style": ["casual", "formal", "sports"], "gender": ["men", "women"]}
    out = label_batch(probs, classes, {"style": 0.6, "gender": 0.8})
    assert [o["style"].label for o in out] == ["formal", "casual", "sports"]  # a tie goes to the first class
    assert [o["style"].confidence for o in out] == [0.7, 0.333333, 0.9]
    assert [o["style"].needs_review for o in out] == [False, True, False]
    assert out[0]["style"].probabilities == {"casual": 0.1, "formal": 0.7, "sports": 0.2}
    assert [o["gender"].label for o in out] == ["men", "men", "women"]
    assert [o["gender"].confidence for o in out] == [0.55, 1.0, 0.8]
    assert out[1]["gender"].probabilities == {"men": 1.0, "women": 0.0}
    assert [o["gender"].needs_review for o in out] == [True, False, False]  # 0.8 is not below 0.8
    assert all(o["gender"].threshold == 0.8 and o["style"].threshold == 0.6 for o in out)


def test_out_of_range_probabilities_are_clipped():
    lab = task_label(np.array([-0.1, 1.2]), ["men", "women"], 0.8)
    assert lab.probabilities == {"men": 0.0, "women": 1.0} and lab.label == "women"


def test_an_override_beats_the_shipped_threshold_which_beats_the_fallback() -> None:
    from services.labeling import FALLBACK_THRESHOLD, resolve_thresholds

    got = resolve_thresholds(["style", "gender", "season"], {"style": 0.7, "gender": None, "season": None}, {"style": 0.9, "gender": 0.8})
    assert got == {"style": 0.7, "gender": 0.8, "season": FALLBACK_THRESHOLD}


def test_out_of_scope_sends_every_label_to_review_and_keeps_the_labels() -> None:
    from services.labeling import scope_checks, with_scope

    classes = {"gender": ("men", "women"), "style": ("casual", "formal", "sports")}
    probs = {"gender": np.array([[0.99, 0.01], [0.98, 0.02]]), "style": np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])}
    labels = label_batch(probs, classes, {"gender": 0.5, "style": 0.5})
    checks = scope_checks(np.array([[0.7, 0.3], [0.1, 0.9]]), 0.5, 2)
    assert [c.in_scope for c in checks] == [True, False]
    assert checks[1].probability == pytest.approx(0.9) and checks[1].threshold == 0.5
    kept, flagged = (with_scope(lab, c) for lab, c in zip(labels, checks, strict=True))
    assert kept == labels[0] and not any(t.needs_review for t in kept.values())
    assert all(t.needs_review for t in flagged.values())
    assert {t: lab.label for t, lab in flagged.items()} == {"gender": "men", "style": "casual"}  # the labels stay
    assert flagged["gender"].confidence == labels[1]["gender"].confidence
    assert scope_checks(None, 0.5, 2) == [None, None] and scope_checks(np.ones((2, 2)) / 2, None, 2) == [None, None]
    assert scope_checks(np.array([[0.5, 0.5]]), 0.5, 1)[0].in_scope  # at the threshold: in scope
    with pytest.raises(ValueError, match="scope"):
        scope_checks(np.ones((2, 3)), 0.5, 2)


def test_with_heads_for_other_categories_an_out_of_scope_label_is_judged_by_their_threshold() -> None:
    from services.labeling import resolve_other_thresholds, scope_checks, with_scope

    classes = {"gender": ("men", "women"), "style": ("casual", "formal", "sports"), "season": ("spring-fall", "summer", "winter")}
    probs = {"gender": np.array([[0.9, 0.1], [0.9, 0.1]]), "style": np.array([[0.6, 0.2, 0.2]] * 2), "season": np.array([[0.9, 0.05, 0.05]] * 2)}
    labels = label_batch(probs, classes, {"gender": 0.95, "style": 0.95, "season": 0.95})
    checks = scope_checks(np.array([[0.99, 0.01], [0.1, 0.9]]), 0.5, 2, routed_above=0.5)
    assert not checks[0].other_heads and checks[1].other_heads  # said of the photos the served graph routed to them
    others = {"gender": 0.8, "style": 0.7}  # no threshold for season
    inside, shoe = (with_scope(lab, c, others) for lab, c in zip(labels, checks, strict=True))
    assert inside == labels[0]  # in scope: the main heads' thresholds
    assert not shoe["gender"].needs_review and shoe["gender"].threshold == 0.8  # 0.9 >= 0.8: accepted
    assert shoe["style"].needs_review and shoe["style"].threshold == 0.7  # 0.6 < 0.7
    assert shoe["season"].needs_review  # a task without a threshold for them goes to review
    without = scope_checks(np.array([[0.1, 0.9]]), 0.5, 1)[0]  # a model without such heads: all to review, as before
    assert all(lab.needs_review for lab in with_scope(labels[1], without, others).values())
    assert resolve_other_thresholds({"gender": None, "style": 0.99}, {"gender": 0.8, "style": 0.7}) == {"gender": 0.8, "style": 0.99}
    # the operator's scope threshold (0.95) above the shipped one (0.5): a photo at 0.9 is in scope, yet its
    # labels are the other heads' (routed at 0.5), so their thresholds judge them
    raised = scope_checks(np.array([[0.1, 0.9]]), 0.95, 1, routed_above=0.5)[0]
    assert raised.in_scope and raised.other_heads
    assert with_scope(labels[1], raised, others)["gender"].threshold == 0.8


def test_the_labels_table_says_when_a_photo_was_out_of_scope() -> None:
    from autolabel.labels import format_row
    from services.events import ImageLocation, ModelInfo, ProductLabeled, S3Location, ScopeCheck
    from services.labeling import with_scope

    classes = {"style": ("casual", "formal", "sports"), "gender": ("men", "women"), "season": ("spring-fall", "summer", "winter")}
    probs = {"style": np.array([[0.9, 0.05, 0.05]]), "gender": np.array([[0.99, 0.01]]), "season": np.array([[0.2, 0.7, 0.1]])}
    labels = label_batch(probs, classes, {"style": 0.5, "gender": 0.5, "season": 0.5})[0]

    def event(scope: ScopeCheck | None, flag: bool = True) -> ProductLabeled:
        labs = with_scope(labels, scope) if flag else labels
        return ProductLabeled(product_id="p1", source_event_id="e1", image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/x.jpg")),
                              labels=labs, model=ModelInfo(name="m", version="v", backbone="b", weights_source="w"),
                              needs_review=any(t.needs_review for t in labs.values()), latency_ms=1.0, scope=scope)

    assert format_row(event(None)).endswith(" no")
    assert format_row(event(ScopeCheck(in_scope=True, probability=0.01, threshold=0.3))).endswith(" no")
    assert format_row(event(ScopeCheck(in_scope=False, probability=0.97, threshold=0.3))).endswith("yes (out of scope, P 0.97)")
    with pytest.raises(ValueError, match="out of scope"):  # the schema refuses an out-of-scope photo with a label accepted
        event(ScopeCheck(in_scope=False, probability=0.97, threshold=0.3), flag=False)
    other = ScopeCheck(in_scope=False, probability=0.97, threshold=0.3, other_heads=True)  # ... unless heads made for it judged it
    assert format_row(event(other, flag=False)).endswith("no (out of scope, P 0.97: other heads)")  # every label above its threshold


def test_review_policies_per_task() -> None:
    from services.labeling import with_policy

    classes = {"style": ("casual", "formal", "sports"), "gender": ("men", "women"), "season": ("spring-fall", "summer", "winter")}
    probs = {"style": np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]]), "gender": np.array([[0.99, 0.01], [0.99, 0.01]]),
             "season": np.array([[0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])}
    sure_style, unsure_style = label_batch(probs, classes, {"style": 0.6, "gender": 0.6, "season": 0.6})
    assert [lab.status for lab in sure_style.values()] == ["accepted", "accepted", "review"]
    assert with_policy(sure_style, {}) == sure_style  # the default: queued when under its threshold
    advisory = with_policy(sure_style, {"season": "advisory"})
    assert advisory["season"].status == "advisory" and not advisory["season"].needs_review
    assert advisory["season"].label == "spring-fall" and advisory["season"].probabilities == sure_style["season"].probabilities
    assert not any(lab.needs_review for lab in advisory.values())  # the product skips review
    assert with_policy(unsure_style, {"season": "advisory"})["season"].status == "accepted"  # a sure label stays accepted
    assert with_policy(unsure_style, {"season": "advisory"})["style"].status == "review"  # another task still queues
    always = with_policy(sure_style, {"gender": "always"})
    assert always["gender"].status == "review" and always["gender"].needs_review


def test_a_label_status_agrees_with_needs_review_and_older_records_get_one() -> None:
    from services.events import TaskLabel

    old = TaskLabel.model_validate_json('{"label": "men", "confidence": 0.9, "probabilities": {"men": 0.9, "women": 0.1}, '
                                        '"threshold": 0.5, "needs_review": false}')
    assert old.status == "accepted"
    assert TaskLabel(label="men", confidence=0.4, probabilities={"men": 0.4, "women": 0.6}, threshold=0.5, needs_review=True).status == "review"
    with pytest.raises(ValueError, match="status"):
        TaskLabel(label="men", confidence=0.4, probabilities={"men": 0.4}, threshold=0.5, needs_review=True, status="advisory")


def test_policies_are_settings_and_an_unknown_task_or_policy_is_refused(monkeypatch) -> None:
    from services.settings import Settings

    monkeypatch.setenv("AUTOLABEL_REVIEW_POLICY", "season=advisory, style=always")
    assert Settings().review_policy == {"season": "advisory", "style": "always"}
    for bad in ("colour=advisory", "season=sometimes", "season"):
        monkeypatch.setenv("AUTOLABEL_REVIEW_POLICY", bad)
        with pytest.raises(ValueError):
            Settings()


def test_an_out_of_scope_photo_may_carry_an_advisory_label_but_not_an_accepted_one() -> None:
    from autolabel.labels import format_row
    from services.events import ImageLocation, ModelInfo, ProductLabeled, S3Location, ScopeCheck
    from services.labeling import with_policy, with_scope

    classes = {"style": ("casual", "formal", "sports"), "gender": ("men", "women"), "season": ("spring-fall", "summer", "winter")}
    probs = {"style": np.array([[0.9, 0.05, 0.05]]), "gender": np.array([[0.99, 0.01]]), "season": np.array([[0.2, 0.7, 0.1]])}
    scope = ScopeCheck(in_scope=False, probability=0.97, threshold=0.3)
    labels = with_policy(with_scope(label_batch(probs, classes, {"style": 0.5, "gender": 0.5, "season": 0.5})[0], scope),
                         {"season": "advisory"})
    event = ProductLabeled(product_id="p1", source_event_id="e1", image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/x.jpg")),
                           labels=labels, model=ModelInfo(name="m", version="v", backbone="b", weights_source="w"),
                           needs_review=True, latency_ms=1.0, scope=scope)
    assert [lab.status for lab in event.labels.values()] == ["review", "review", "advisory"]
    row = format_row(event)
    assert "casual 0.90 review" in row and "summer 0.70 advisory" in row
